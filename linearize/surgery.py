"""Checkpoint surgery: find each softmax attention by structure, swap in a linear attention that
reuses its q/k/v/o projections, and count what is new.

    model = convert(model, LinearizeConfig(method="lizard", softmax_layers=[0, 15]))

Attention is recognised structurally (``model.model.layers[i].self_attn`` with q/k/v/o linear
projections and RoPE supplied by the model); a family is supported once its Linearized* class
exists in modeling.py (Llama, Mistral, Qwen2). Anything else is refused with its class name.
"""
from __future__ import annotations

import contextlib
import logging

from torch import nn

from .attention import ATTENTION_CLASSES, LinearizedAttention
from .attention.base import MODES, PROJECTIONS
from .config import LinearizeConfig
from .rmsnorm import swap_norms

logger = logging.getLogger(__name__)


def decoder_layers(model) -> list[nn.Module]:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        return []
    return list(layers)


def _looks_like_attention(attn) -> bool:
    return all(isinstance(getattr(attn, p, None), nn.Linear) for p in PROJECTIONS)


def check_convertible(model) -> None:
    """Raise a clear error unless ``model`` is a supported, not yet linearized causal LM."""
    from .modeling import FAMILIES

    cls = type(model).__name__
    existing = getattr(model.config, "linearize", None)
    if existing is not None:
        method = existing.get("method") if isinstance(existing, dict) else existing
        raise ValueError(f"{cls} is already linearized (method {method!r}); convert the original checkpoint instead")
    layers = decoder_layers(model)
    if not layers or not all(_looks_like_attention(getattr(l, "self_attn", None)) for l in layers):
        raise ValueError(
            f"unsupported architecture {cls}: linearize needs decoder layers at model.model.layers[i].self_attn "
            f"with q_proj/k_proj/v_proj/o_proj linear projections (Llama, Mistral, Qwen2)"
        )
    mt = getattr(model.config, "model_type", None)
    if mt not in FAMILIES or not isinstance(model, FAMILIES[mt][1]):
        supported = ", ".join(f[1].__name__ for f in FAMILIES.values())
        raise ValueError(f"unsupported architecture {cls} (model_type {mt!r}): supported are {supported}")


def swap_attention(model, lcfg: LinearizeConfig) -> None:
    """Replace every layer's attention by its method's module, in place (weights are reused)."""
    layers = decoder_layers(model)
    bad = [i for i in [*lcfg.softmax_layers, *lcfg.layer_methods] if not 0 <= i < len(layers)]
    if bad:
        raise ValueError(f"layer indices {bad} out of range: the model has {len(layers)} layers")
    for i, layer in enumerate(layers):
        method = lcfg.method_for_layer(i)
        if method == "softmax":
            continue
        layer.self_attn = ATTENTION_CLASSES[method](layer.self_attn, lcfg, i)


def convert(model, config: LinearizeConfig | None = None, **options):
    """Linearize ``model`` in place and return it, as its Linearized*ForCausalLM class.

    config: a LinearizeConfig, or its fields as keyword ``options``. Only the new parameters
    (feature maps, gates, meta tokens, mixing factors) are fresh; every other weight is the
    original tensor.
    """
    from .modeling import FAMILIES

    lcfg = config if config is not None else LinearizeConfig(**options)
    if config is not None and options:
        raise TypeError("pass either a LinearizeConfig or its fields, not both")
    check_convertible(model)
    config_cls, base_cls, lin_config_cls, lin_model_cls = FAMILIES[model.config.model_type]
    swap_attention(model, lcfg)
    swap_norms(model)
    d = model.config.to_dict()
    d.pop("model_type", None)
    d.pop("architectures", None)
    d.pop("quantization_config", None)
    new_config = lin_config_cls(linearize=lcfg.to_dict(), **d)
    new_config._attn_implementation = model.config._attn_implementation
    new_config.architectures = [lin_model_cls.__name__]
    model.config = new_config
    model.__class__ = lin_model_cls
    if getattr(model, "generation_config", None) is not None:
        model.generation_config._from_model_config = False
    n = sum(p.numel() for _, p in new_parameters(model))
    logger.info("linearized %s with %s: %d new parameters", base_cls.__name__, lcfg.method, n)
    return model


def new_parameters(model) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of everything conversion created."""
    out = []
    for name, module in model.named_modules():
        if isinstance(module, LinearizedAttention):
            for pname, p in module.named_parameters():
                if pname.split(".")[0] not in PROJECTIONS:
                    out.append((f"{name}.{pname}", p))
    return out


def count_new_parameters(model) -> int:
    return sum(p.numel() for _, p in new_parameters(model))


def linear_layer_flags(model) -> list[bool]:
    """Per decoder layer: True where the attention is linearized (False: kept as softmax)."""
    return [isinstance(layer.self_attn, LinearizedAttention) for layer in decoder_layers(model)]


def linearized_modules(model) -> list[LinearizedAttention]:
    return [m for m in model.modules() if isinstance(m, LinearizedAttention)]


def set_mode(model, mode: str) -> None:
    """Put every linearized attention in ``mode``: student | teacher | transfer."""
    if mode not in MODES:
        raise ValueError(f"unknown attention mode {mode!r}: one of {MODES}")
    for m in linearized_modules(model):
        m.mode = mode


@contextlib.contextmanager
def attention_mode(model, mode: str):
    """Temporarily switch every linearized attention to ``mode``."""
    modules = linearized_modules(model)
    before = [m.mode for m in modules]
    set_mode(model, mode)
    try:
        yield model
    finally:
        for m, b in zip(modules, before):
            m.mode = b
