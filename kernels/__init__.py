"""Triton kernels for linearize (imported as ``linearize.kernels``).

Importing this package registers, with ``linearize.attention.dispatch``:

    ("hybrid", "step")     decode.hybrid_step_triton   one launch per layer and step (hedgehog, lizard)
    ("gsa", "step")        decode.gsa_step_triton      one launch per layer and step
    ("hybrid", "chunked")  chunk.hybrid_chunked_triton linear half in Triton GLA (fwd + bwd)
    ("hybrid", "continue") chunk.hybrid_chunked_continue_triton   the same from a state (segmented prefill)
    ("gsa", "chunked")     chunk.gsa_chunked_triton    both GLA passes in Triton (fwd + bwd)
    ("rope", "head_major") rope.rope_head_major_triton RoPE + heads-first layout in one pass (and its backward)
    ("hedgehog", "features") feature_map.hedgehog_features_triton  the feature map in one pass (no autograd)
    ("rmsnorm", "forward") rmsnorm.rms_norm_triton     the families' RMSNorm in one pass (and its backward)
    ("lm_loss", "softmax_grad") cross_entropy.softmax_grad_rows_triton  the LM loss's softmax gradient, in place

each for CUDA tensors only; anything else (CPU, no Triton) keeps the PyTorch reference.
LINEARIZE_KERNELS=0 forces the references everywhere.
"""
from __future__ import annotations

AVAILABLE = False
try:  # pragma: no cover - depends on the platform
    import triton  # noqa: F401

    AVAILABLE = True
except ImportError:  # pragma: no cover
    pass



def _ok(*ts) -> bool:
    import torch

    return all(t is None or (t.is_cuda and t.dtype in (torch.float16, torch.bfloat16, torch.float32)) for t in ts)


def _hybrid_step_when(**kw) -> bool:
    q = kw.get("q")
    return q is not None and q.dim() >= 3 and _ok(q, kw.get("k"), kw.get("v"), kw.get("fq"), kw.get("fk"))


def _gsa_when(**kw) -> bool:
    q = kw.get("q")
    return q is not None and _ok(q, kw.get("k"), kw.get("v"))


def register_all() -> bool:
    """Register the kernels with the dispatch table (idempotent). False when Triton is missing."""
    if not AVAILABLE:
        return False
    from linearize.attention import dispatch

    from . import chunk, cross_entropy, decode, feature_map, rmsnorm, rope

    table = (
        ("rope", "head_major", rope.rope_head_major_triton, lambda **kw: rope.supports(**kw)),
        ("hedgehog", "features", feature_map.hedgehog_features_triton, lambda **kw: feature_map.supports(**kw)),
        ("rmsnorm", "forward", rmsnorm.rms_norm_triton, lambda **kw: rmsnorm.supports(**kw)),
        ("lm_loss", "softmax_grad", cross_entropy.softmax_grad_rows_triton, lambda **kw: cross_entropy.supports(**kw)),
        ("hybrid", "step", decode.hybrid_step_triton, _hybrid_step_when),
        ("gsa", "step", decode.gsa_step_triton, _gsa_when),
        ("hybrid", "chunked", chunk.hybrid_chunked_triton, _hybrid_step_when),
        ("hybrid", "continue", chunk.hybrid_chunked_continue_triton, _hybrid_step_when),
        ("gsa", "chunked", chunk.gsa_chunked_triton, _gsa_when),
    )
    for op, form, fn, when in table:
        if fn not in dispatch.registered(op, form):
            dispatch.register(op, form, fn, when=when)
    return True


# Run from the repository root, this folder is also importable as a top-level `kernels` (which
# transformers probes for the HF hub package of that name): register only under our own name.
if __name__ == "linearize.kernels":
    register_all()
