"""The keyword under which the installed transformers passes a model's cache.

transformers 5.24 renamed ``past_key_values`` to ``cache``: in every forward's arguments (the old name
still works until 5.40, with a FutureWarning, and is dropped when both are given) and in model outputs.
Our wrappers accept either name and hand the cache on under the one the installed version reads, so
one code path serves every transformers the package allows.
"""
from __future__ import annotations

import inspect
from functools import lru_cache


@lru_cache(maxsize=None)
def cache_kwarg() -> str:
    """``"cache"`` (transformers >= 5.24) or ``"past_key_values"`` (earlier)."""
    from transformers.models.llama.modeling_llama import LlamaModel

    return "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


def pick_cache(cache, past_key_values):
    """The cache a caller gave under either name; two different ones are an error."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("got a cache as both `cache` and `past_key_values`: pass one")
    return cache if cache is not None else past_key_values


def output_cache(out):
    """The cache a model output carries, under the installed name (no deprecation warning)."""
    return getattr(out, cache_kwarg())
