"""Elementwise glue fused by torch.compile on the GPU.

The attention forms chain many small elementwise ops (feature-map softmaxes, gate squashing,
lagged keys, the shared normaliser). In eager PyTorch each is its own kernel and its own trip
through memory; on a GPU the training step is then bound by those trips, not by the matmuls.
``fused(fn)`` compiles ``fn`` with torch.compile (Inductor merges such chains into a few Triton
kernels, backward included) and uses it only where it pays: CUDA tensors of at least
``MIN_NUMEL`` elements. Decode steps (one token) and CPU runs call the plain function, so tests
and CUDA-graph capture see exactly the reference code.

LINEARIZE_COMPILE=0 turns it off.
"""
from __future__ import annotations

import functools
import os

import torch

MIN_NUMEL = 1 << 16


def _enabled() -> bool:
    return os.environ.get("LINEARIZE_COMPILE", "1") != "0"


def _big_cuda(args, kwargs) -> bool:
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            return a.is_cuda and a.numel() >= MIN_NUMEL
    return False


def fused(fn):
    """``fn`` compiled for large CUDA inputs, itself elsewhere; ``.reference`` is the plain ``fn``."""
    compiled = None

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        nonlocal compiled
        if not (_enabled() and _big_cuda(args, kwargs)) or torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        if compiled is None:
            compiled = torch.compile(fn, dynamic=None)
        return compiled(*args, **kwargs)

    wrapper.reference = fn
    return wrapper
