"""Triton RoPE that also moves the heads forward, forward and backward.

Same contract as linearize.attention.base.rope_head_major:

    q: [B, T, H, D], k: [B, T, Hkv, D] (the projections' outputs viewed per head; any strides with a
    unit last stride); cos, sin: [B or 1, T, D] -> q', k' contiguous [B, H, T, D], [B, Hkv, T, D]
    x' = x cos + rotate_half(x) sin,  rotate_half([x1, x2]) = [-x2, x1]

The rotation is linear in x, so its backward is the transposed rotation, run by the same kernel
from the heads-first layout back to the projection's: dx1 = dy1 c1 + dy2 s2, dx2 = dy2 c2 - dy1 s1.

Why: in PyTorch the rotation runs on the transposed views as five elementwise kernels per tensor
(two multiplies, a negation, a concatenation, an add), each a strided pass over the tensor, and
the window and GLA kernels then copy the result to make it contiguous; autograd's backward is as
many passes again. Here it is one pass each way that reads one layout and writes the other
(computed in fp32, rounded once).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .chunk import no_autograd


@triton.jit
def _rope_kernel(x_ptr, cos_ptr, sin_ptr, out_ptr, T, H, sxb, sxt, sxh, sob, sot, soh, scb, sct,
                 HALF: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, TRANSPOSE: tl.constexpr):
    """x and out: any [b, t, h, d] strides (given per axis, the last unit); TRANSPOSE applies the
    inverse (= transposed) rotation, the backward's."""
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
    if TRANSPOSE:
        o1 = x1 * c1 + x2 * s2
        o2 = x2 * c2 - x1 * s1
    else:
        o1 = x1 * c1 - x2 * s1
        o2 = x2 * c2 + x1 * s2
    op = out_ptr + b * sob + t[:, None].to(tl.int64) * sot + h * soh + d[None, :]
    tl.store(op, o1.to(out_ptr.dtype.element_ty), mask=m)
    tl.store(op + HALF, o2.to(out_ptr.dtype.element_ty), mask=m)


def _rotate(x, cos, sin, transpose: bool = False):
    """x: [B, T, H, D] (any strides, unit last) -> rotated, contiguous [B, H, T, D]; with
    ``transpose``, x: [B, H, T, D] (a gradient) -> the transposed rotation, contiguous [B, T, H, D]."""
    if transpose:
        B, H, T, D = x.shape
        sxb, sxh, sxt = x.stride(0), x.stride(1), x.stride(2)
        out = torch.empty(B, T, H, D, device=x.device, dtype=x.dtype)
        sob, sot, soh = out.stride(0), out.stride(1), out.stride(2)
    else:
        B, T, H, D = x.shape
        sxb, sxt, sxh = x.stride(0), x.stride(1), x.stride(2)
        out = torch.empty(B, H, T, D, device=x.device, dtype=x.dtype)
        sob, soh, sot = out.stride(0), out.stride(1), out.stride(2)
    if x.numel() == 0:
        return out
    scb = 0 if cos.shape[0] == 1 else cos.stride(0)
    BT = 64
    _rope_kernel[(triton.cdiv(T, BT), B * H)](x, cos, sin, out, T, H, sxb, sxt, sxh, sob, sot, soh,
                                             scb, cos.stride(1), HALF=D // 2, BT=BT, BD=triton.next_power_of_2(D // 2),
                                             TRANSPOSE=transpose, num_warps=4)
    return out


class RopeHeadMajor(torch.autograd.Function):
    """(q, k, cos, sin) -> (q', k') with gradients for q and k (cos and sin are constants)."""

    @staticmethod
    def forward(ctx, q, k, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)

    @staticmethod
    def backward(ctx, dq, dk):
        cos, sin = ctx.saved_tensors
        grad = lambda d: None if d is None else _rotate(d if d.stride(-1) == 1 else d.contiguous(), cos, sin, True)  # noqa: E731
        return (grad(dq) if ctx.needs_input_grad[0] else None,
                grad(dk) if ctx.needs_input_grad[1] else None, None, None)


def rope_head_major_triton(q, k, cos, sin):
    """Same contract as linearize.attention.base.rope_head_major; differentiable in q and k when
    autograd runs through them."""
    cos, sin = (c if c.dim() == 3 else c.unsqueeze(0) for c in (cos, sin))
    if sin.stride() != cos.stride() or cos.stride(-1) != 1:  # the kernel indexes both with cos's strides
        cos, sin = cos.contiguous(), sin.contiguous()
    if no_autograd(q, k):
        return _rotate(q, cos, sin), _rotate(k, cos, sin)
    return RopeHeadMajor.apply(q, k, cos.detach(), sin.detach())


def supports(q, k, cos, sin) -> bool:
    """CUDA, even head dim, unit last strides, not inside a torch.compile trace."""
    return (q.is_cuda and q.shape[-1] % 2 == 0 and q.stride(-1) == 1 and k.stride(-1) == 1
            and not torch.compiler.is_compiling())
