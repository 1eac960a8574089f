"""Triton Hedgehog feature map, forward only (no autograd: prefill, scoring, the decode step's eager path).

Same contract as linearize.attention.feature_maps.hedgehog_features:

    x: [B, H, T, D] (any strides with a unit last stride); weight: [H, D, F]; bias: [H, F]
    -> [B, H, T, 2F] contiguous, in x's dtype
    z = x W_h + b_h,  phi(x) = [softmax(z), softmax(-z)]   (softmax over the F features)

Why: in PyTorch the map is a batched matmul (its einsum first copies x to a heads-major batch),
then a fused softmax kernel that reads z back; at B16 x 16K the feature maps took 92 ms of the
prefill's 820 ms of CUDA time (session 9), against a traffic floor near 20 ms. Here one pass reads a
tile of x, multiplies it by the head's map in registers (fp32 accumulation), takes both softmaxes
and writes the features once.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .chunk import no_autograd
from .window import _prec


@triton.jit
def _hedgehog_kernel(x_ptr, w_ptr, b_ptr, o_ptr, T, H, D, F, sxb, sxh, sxt,
                     BT: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr, PREC: tl.constexpr):
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    d = tl.arange(0, BD)
    f = tl.arange(0, BF)
    mt, md, mf = t < T, d < D, f < F
    x = tl.load(x_ptr + b * sxb + h * sxh + t[:, None].to(tl.int64) * sxt + d[None, :],
                mask=mt[:, None] & md[None, :], other=0.)
    w = tl.load(w_ptr + (h * D + d[:, None]) * F + f[None, :], mask=md[:, None] & mf[None, :], other=0.)
    z = tl.dot(x, w.to(x.dtype), input_precision=PREC) + tl.load(b_ptr + h * F + f, mask=mf, other=0.).to(tl.float32)[None, :]
    zp = tl.where(mf[None, :], z, float("-inf"))
    zn = tl.where(mf[None, :], -z, float("-inf"))
    ep = tl.exp(zp - tl.max(zp, 1)[:, None])
    en = tl.exp(zn - tl.max(zn, 1)[:, None])
    pos = ep / tl.sum(ep, 1)[:, None]
    neg = en / tl.sum(en, 1)[:, None]
    op = o_ptr + (bh * T + t[:, None]) * (2 * F) + f[None, :]
    m = mt[:, None] & mf[None, :]
    tl.store(op, pos.to(o_ptr.dtype.element_ty), mask=m)
    tl.store(op + F, neg.to(o_ptr.dtype.element_ty), mask=m)


def hedgehog_features_triton(x, weight, bias):
    """Same contract as linearize.attention.feature_maps.hedgehog_features, forward only."""
    B, H, T, D = x.shape
    F = weight.shape[-1]
    out = torch.empty(B, H, T, 2 * F, device=x.device, dtype=x.dtype)
    if out.numel() == 0:
        return out
    weight, bias = weight.contiguous(), bias.contiguous()
    BT = 16 if T <= 16 else 64  # tl.dot needs 16 rows; a decode step (T = 1) wastes the rest of one tile
    _hedgehog_kernel[(triton.cdiv(T, BT), B * H)](
        x, weight, bias, out, T, H, D, F, x.stride(0), x.stride(1), x.stride(2),
        BT=BT, BD=max(16, triton.next_power_of_2(D)), BF=max(16, triton.next_power_of_2(F)),
        PREC=_prec(x.dtype), num_warps=4)
    return out


def supports(x, weight, bias) -> bool:
    """CUDA, unit last stride, no autograd through the map, not inside a torch.compile trace (there
    Inductor fuses the reference itself)."""
    return (x.is_cuda and x.dim() == 4 and x.stride(-1) == 1 and not torch.compiler.is_compiling()
            and no_autograd(x, weight, bias))
