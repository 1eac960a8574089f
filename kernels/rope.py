"""Triton RoPE that also moves the heads forward (no autograd: prefill, scoring, stage 1's teacher side).

Same contract as linearize.attention.base.rope_head_major:

    q: [B, T, H, D], k: [B, T, Hkv, D] (the projections' outputs viewed per head; any strides with a
    unit last stride); cos, sin: [B or 1, T, D] -> q', k' contiguous [B, H, T, D], [B, Hkv, T, D]
    x' = x cos + rotate_half(x) sin,  rotate_half([x1, x2]) = [-x2, x1]

Why: in PyTorch the rotation runs on the transposed views as five elementwise kernels per tensor
(two multiplies, a negation, a concatenation, an add), each a strided pass over the tensor, and
the window and GLA kernels then copy the result to make it contiguous. Here it is one pass that
reads the projection's layout and writes the head-major one (computed in fp32, rounded once).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .chunk import no_autograd


@triton.jit
def _rope_kernel(x_ptr, cos_ptr, sin_ptr, out_ptr, T, H, sxb, sxt, sxh, scb, sct,
                 HALF: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    d = tl.arange(0, BD)
    m = (t < T)[:, None] & (d < HALF)[None, :]
    xp = x_ptr + b * sxb + t[:, None].to(tl.int64) * sxt + h * sxh + d[None, :]
    x1 = tl.load(xp, mask=m, other=0.).to(tl.float32)
    x2 = tl.load(xp + HALF, mask=m, other=0.).to(tl.float32)
    cp = b * scb + t[:, None].to(tl.int64) * sct + d[None, :]
    c1 = tl.load(cos_ptr + cp, mask=m, other=0.).to(tl.float32)
    c2 = tl.load(cos_ptr + cp + HALF, mask=m, other=0.).to(tl.float32)
    s1 = tl.load(sin_ptr + cp, mask=m, other=0.).to(tl.float32)
    s2 = tl.load(sin_ptr + cp + HALF, mask=m, other=0.).to(tl.float32)
    op = out_ptr + (bh * T + t[:, None]) * (2 * HALF) + d[None, :]
    tl.store(op, (x1 * c1 - x2 * s1).to(out_ptr.dtype.element_ty), mask=m)
    tl.store(op + HALF, (x2 * c2 + x1 * s2).to(out_ptr.dtype.element_ty), mask=m)


def _rope_one(x, cos, sin):
    B, T, H, D = x.shape
    out = torch.empty(B, H, T, D, device=x.device, dtype=x.dtype)
    if x.numel() == 0:
        return out
    scb = 0 if cos.shape[0] == 1 else cos.stride(0)
    BT = 64
    _rope_kernel[(triton.cdiv(T, BT), B * H)](x, cos, sin, out, T, H, x.stride(0), x.stride(1), x.stride(2),
                                             scb, cos.stride(1), HALF=D // 2, BT=BT, BD=triton.next_power_of_2(D // 2),
                                             num_warps=4)
    return out


def rope_head_major_triton(q, k, cos, sin):
    """Same contract as linearize.attention.base.rope_head_major, forward only."""
    cos, sin = (c if c.dim() == 3 else c.unsqueeze(0) for c in (cos, sin))
    if sin.stride() != cos.stride() or cos.stride(-1) != 1:  # the kernel indexes both with cos's strides
        cos, sin = cos.contiguous(), sin.contiguous()
    return _rope_one(q, cos, sin), _rope_one(k, cos, sin)


def supports(q, k, cos, sin) -> bool:
    """CUDA, no autograd through the rotation, even head dim, unit last strides."""
    return (q.is_cuda and q.shape[-1] % 2 == 0 and q.stride(-1) == 1 and k.stride(-1) == 1
            and no_autograd(q, k))
