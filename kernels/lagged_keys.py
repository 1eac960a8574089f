"""Triton forward of the hybrids' lagged keys and values (no autograd: prefill, scoring, perplexity).

Same contract as linearize.attention.hybrid.lagged_keys:

    k'_t = fk_{t-w} * exp(S_t),  S_t = sum_{u = t-w+1..t} g_u     (k'_t = 0 for t < w)
    v'_t = [v_{t-w}, 1]  (or v_{t-w} with ones=False)            (v'_t = 0 for t < w)

    shapes  fk, g: [B, H, T, F]; v: [B, H, T, V] -> k' [B, H, T, F], v' [B, H, T, V (+1)]

Why a kernel: without autograd the glue is compiled with dynamic shapes (linearize.attention.fusion),
and Inductor's dynamic-shape kernel for this function indexes in int64 through the blocks-of-w
reshape: on the H100 at batch 16 x 16K tokens it took 8.6 ms a layer, 22 % of the whole prefill
(benchmarks/profile_generate.py), against about 1 ms of memory traffic.

One program per (block of BT >= w rows, head, block of BC features). The window sum is exact per
block, never carried across blocks: S over the block's rows is

    S_{t0+i} = S_{t0-1} + cumsum_i (g_{t0+i} - g_{t0+i-w}),   S_{t0-1} = sum of g_{t0-w .. t0-1}

and the rows t0-w .. t0-1 are the first w rows of the lagged tile the program loads anyway (BT >= w),
so every S is a sum of at most BT + w bounded terms whatever T is.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .chunk import pow2_block


@triton.jit
def _lagged_keys_kernel(fk_ptr, g_ptr, out_ptr, T, F, W, H, sgb, sgh, sgt, BT: tl.constexpr, BC: tl.constexpr):
    it = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    gbase = (bh // H) * sgb + (bh % H) * sgh  # g keeps the gate's own layout (a [B, T, H, F] view)
    t = it * BT + tl.arange(0, BT)
    c = tl.program_id(2) * BC + tl.arange(0, BC)
    mc = c < F
    src = t - W  # the key that leaves the window at t enters the linear state at t
    m_new = (t < T)[:, None] & mc[None, :]
    m_old = ((src >= 0) & (src < T))[:, None] & mc[None, :]  # the carry needs rows the last block does not write
    base = bh * T * F
    g_new = tl.load(g_ptr + gbase + t[:, None].to(tl.int64) * sgt + c[None, :], mask=m_new, other=0.).to(tl.float32)
    g_old = tl.load(g_ptr + gbase + src[:, None].to(tl.int64) * sgt + c[None, :], mask=m_old, other=0.).to(tl.float32)
    carry = tl.sum(tl.where(tl.arange(0, BT)[:, None] < W, g_old, 0.), axis=0)  # S at the row before the block
    S = carry[None, :] + tl.cumsum(g_new - g_old, axis=0)
    fk = tl.load(fk_ptr + base + src[:, None] * F + c[None, :], mask=m_old, other=0.).to(tl.float32)
    tl.store(out_ptr + base + t[:, None] * F + c[None, :], (fk * tl.exp(S)).to(out_ptr.dtype.element_ty),
             mask=m_new)


def lagged_keys_triton(fk, v, g, window: int, ones: bool = True):
    """Same contract as linearize.attention.hybrid.lagged_keys, forward only (no autograd graph)."""
    B, H, T, F = fk.shape
    V = v.shape[-1]
    w = int(window)
    vv = v.new_zeros(B, H, T, V + 1 if ones else V)
    if T > w:
        vv[:, :, w:, :V] = v[:, :, :T - w]
        if ones:
            vv[:, :, w:, V] = 1
    if g is None:
        kk = fk.new_zeros(B, H, T, F)
        if T > w:
            kk[:, :, w:] = fk[:, :, :T - w]
        return kk, vv
    fk = fk.contiguous()
    if g.stride(-1) != 1:
        g = g.contiguous()
    # g is read through its strides: the gate arrives as a heads-first view of [B, T, H, F], and a
    # contiguous copy of it (fp32, 1.2 GB a layer at B16 x 16K) cost more than this kernel
    kk = torch.empty_like(fk)
    BT = pow2_block(w)
    BC = min(pow2_block(F), 64 if BT <= 64 else 32)
    _lagged_keys_kernel[(triton.cdiv(T, BT), B * H, triton.cdiv(F, BC))](
        fk, g, kk, T, F, w, H, g.stride(0), g.stride(1), g.stride(2), BT=BT, BC=BC, num_warps=4)
    return kk, vv
