"""Elementwise glue fused by torch.compile on the GPU.

The attention forms chain many small elementwise ops (feature-map softmaxes, gate squashing,
lagged keys, the shared normaliser). In eager PyTorch each is its own kernel and its own trip
through memory; on a GPU the training step is then bound by those trips, not by the matmuls.
``fused(fn)`` compiles ``fn`` with torch.compile (Inductor merges such chains into a few Triton
kernels, backward included) and uses it only where it pays: CUDA tensors of at least
``MIN_NUMEL`` elements. Decode steps (one token) and CPU runs call the plain function, so tests
and CUDA-graph capture see exactly the reference code.

Two compiled versions: training (autograd on) keeps ``dynamic=None`` (static kernels for its fixed
batch shape; torch.compile turns dynamic by itself if the shape changes), inference (no grad:
scoring, prefill) compiles ``dynamic=True`` at once. Scoring feeds a new width every few batches;
``dynamic=None`` there compiled every function twice (static for the first shape, dynamic at the
second), about 34 s of a 53 s harness run on the H100 (session 4).

LINEARIZE_COMPILE=0 turns it off; ``with suspended():`` turns it off for a block (the harness's
scoring does: its CUDA graphs already remove the launch overhead, and on the H100 the glue's
compile cost more than it saved at benchmark size: 2000 documents of piqa + hellaswag took the
student 27.2 s compiled, 11.8 s eager; session 5).
"""
from __future__ import annotations

import contextlib
import functools
import os

import torch

MIN_NUMEL = 1 << 16


_suspended = 0


def _enabled() -> bool:
    return _suspended == 0 and os.environ.get("LINEARIZE_COMPILE", "1") != "0"


@contextlib.contextmanager
def suspended():
    """Run the plain (eager) glue inside this block; nests."""
    global _suspended
    _suspended += 1
    try:
        yield
    finally:
        _suspended -= 1


def _big_cuda(args, kwargs) -> bool:
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            return a.is_cuda and a.numel() >= MIN_NUMEL
    return False


def fused(fn):
    """``fn`` compiled for large CUDA inputs, itself elsewhere; ``.reference`` is the plain ``fn``."""
    compiled: dict[bool, object] = {}

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not (_enabled() and _big_cuda(args, kwargs)) or torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        training = torch.is_grad_enabled()
        if training not in compiled:
            compiled[training] = torch.compile(fn, dynamic=None if training else True)
        return compiled[training](*args, **kwargs)

    wrapper.reference = fn
    return wrapper
