"""Where a fast kernel plugs in: each (op, form) has a PyTorch reference, and a kernel may
register itself for it with a predicate saying when it applies (CUDA tensors, dtypes, shapes).

    register("hybrid", "chunked", triton_fn, when=lambda **kw: kw["q"].is_cuda)
    impl = lookup("hybrid", "chunked", reference_fn, **kwargs)

A registered kernel takes exactly the reference's arguments and returns what it returns.
Set LINEARIZE_KERNELS=0 to force the references.
"""
from __future__ import annotations

import os
from typing import Callable

_REGISTRY: dict[tuple[str, str], list[tuple[Callable, Callable]]] = {}


def register(op: str, form: str, fn: Callable, when: Callable[..., bool] = lambda **kw: True) -> None:
    _REGISTRY.setdefault((op, form), []).insert(0, (when, fn))


def lookup(op: str, form: str, reference: Callable, **kwargs) -> Callable:
    if os.environ.get("LINEARIZE_KERNELS", "1") != "0":
        for when, fn in _REGISTRY.get((op, form), []):
            if when(**kwargs):
                return fn
    return reference


def registered(op: str, form: str) -> list[Callable]:
    return [fn for _, fn in _REGISTRY.get((op, form), [])]
