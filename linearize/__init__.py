"""linearize: turn a pretrained HF transformer into a linear-attention RNN.

    from linearize import convert, LinearizeConfig
    model = convert(model, LinearizeConfig(method="lizard"))

Importing the package registers the Linearized* classes with transformers' Auto classes, so
``AutoModelForCausalLM.from_pretrained(dir)`` reloads converted checkpoints.
"""
from .config import LinearizeConfig, METHODS
from .loading import load_model, resolve_checkpoint

__version__ = "0.1.0"

try:  # the parts below land as they are written; keep the package importable meanwhile
    from .modeling import register_auto_classes
    from .surgery import convert, new_parameters

    register_auto_classes()
    from . import kernels  # registers the Triton kernels for CUDA tensors; a no-op without Triton
except ImportError as _e:  # pragma: no cover
    if "linearize" not in str(_e):
        raise

__all__ = ["LinearizeConfig", "METHODS", "convert", "new_parameters", "load_model", "resolve_checkpoint"]
