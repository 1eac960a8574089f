"""Triton kernels of the hybrids' lagged keys and values: the forward alone (no autograd: prefill,
scoring, perplexity), and forward + backward for training (``lagged_keys_train``).

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

The backward (``LaggedKeys``), with P_t = dk'_t * k'_t (fp32; 0 for t < w and t >= T):

    dfk_j = dk'_{j+w} * exp(S_{j+w})
    dg_u  = sum_{t = u..u+w-1} P_t  =  dg_{u+1} + P_u - P_{u+w}

one program per block of rows j in [t0, t0 + BT): S at rows j and j + w from the g tiles at rows
j - w, j, j + w (as in the forward), and dg as a reverse cumsum of P_j - P_{j+w} over the block plus
dg at t0 + BT, the sum of P over the last w rows of the j + w tile: again bounded terms only.
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


@triton.jit
def _window_sum(g_ptr, gbase, sgt, rows, c, T, mc, W, BT: tl.constexpr):
    """S at rows + W for a block of BT >= W rows (S_t = sum of g over t-W+1..t), fp32 [BT, BC], from
    the g tiles at rows and rows + W (rows outside [0, T) read as 0)."""
    lo = rows
    hi = rows + W
    g_lo = tl.load(g_ptr + gbase + lo[:, None].to(tl.int64) * sgt + c[None, :],
                   mask=((lo >= 0) & (lo < T))[:, None] & mc[None, :], other=0.).to(tl.float32)
    g_hi = tl.load(g_ptr + gbase + hi[:, None].to(tl.int64) * sgt + c[None, :],
                   mask=((hi >= 0) & (hi < T))[:, None] & mc[None, :], other=0.).to(tl.float32)
    carry = tl.sum(tl.where(tl.arange(0, BT)[:, None] < W, g_lo, 0.), axis=0)  # S at the row before rows[0] + W
    return carry[None, :] + tl.cumsum(g_hi - g_lo, axis=0)


@triton.jit
def _lagged_keys_bwd_kernel(fk_ptr, g_ptr, dk_ptr, dfk_ptr, dg_ptr, T, F, W, H, sgb, sgh, sgt,
                            BT: tl.constexpr, BC: tl.constexpr):
    it = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    gbase = (bh // H) * sgb + (bh % H) * sgh
    base = bh * T * F
    j = it * BT + tl.arange(0, BT)
    c = tl.program_id(2) * BC + tl.arange(0, BC)
    mc = c < F
    in_j = (j < T)[:, None] & mc[None, :]
    in_jw = (j + W < T)[:, None] & mc[None, :]
    lag = ((j >= W) & (j < T))[:, None] & mc[None, :]
    S_j = _window_sum(g_ptr, gbase, sgt, j - W, c, T, mc, W, BT)  # S at rows j
    S_jw = _window_sum(g_ptr, gbase, sgt, j, c, T, mc, W, BT)  # S at rows j + W
    dk_j = tl.load(dk_ptr + base + j[:, None] * F + c[None, :], mask=lag, other=0.).to(tl.float32)
    dk_jw = tl.load(dk_ptr + base + (j + W)[:, None] * F + c[None, :], mask=in_jw, other=0.).to(tl.float32)
    fk_old = tl.load(fk_ptr + base + (j - W)[:, None] * F + c[None, :], mask=lag, other=0.).to(tl.float32)
    fk_j = tl.load(fk_ptr + base + j[:, None] * F + c[None, :], mask=in_j, other=0.).to(tl.float32)
    dfk = dk_jw * tl.exp(S_jw)
    P_j = dk_j * fk_old * tl.exp(S_j)
    P_jw = dfk * fk_j
    carry = tl.sum(tl.where(tl.arange(0, BT)[:, None] >= BT - W, P_jw, 0.), axis=0)  # dg at row t0 + BT
    dg = carry[None, :] + tl.cumsum(P_j - P_jw, axis=0, reverse=True)
    tl.store(dfk_ptr + base + j[:, None] * F + c[None, :], dfk.to(dfk_ptr.dtype.element_ty), mask=in_j)
    tl.store(dg_ptr + base + j[:, None] * F + c[None, :], dg.to(dg_ptr.dtype.element_ty), mask=in_j)


def _launch(F, w, backward=False):
    """(row block, feature block). The backward holds about eight [BT, BC] fp32 tiles: at BT = BC = 64
    they spill (H100, SmolLM2 Lizard layer: 200 us against the forward's 58), so it takes half the
    features."""
    BT = pow2_block(w)
    BC = min(pow2_block(F), 64 if BT <= 64 else 32)
    return BT, (min(BC, BWD_BC) if backward else BC)


BWD_BC = 32  # the backward's feature block at most (a knob for benchmarks)


class LaggedKeys(torch.autograd.Function):
    """k' = fk_{t-w} * exp(S_t) with its backward (dfk, dg); fk, g: [B, H, T, F] (g may be a strided
    view with a unit last stride); dg comes back contiguous in g's dtype."""

    @staticmethod
    def forward(ctx, fk, g, window):
        kk, fk, g = _gated_lagged_keys(fk, g, int(window))
        ctx.save_for_backward(fk, g)
        ctx.w = int(window)
        return kk

    @staticmethod
    def backward(ctx, dk):
        fk, g = ctx.saved_tensors
        B, H, T, F = fk.shape
        w = ctx.w
        dk = dk.contiguous()
        dfk = torch.empty_like(fk)
        dg = torch.empty(B, H, T, F, device=g.device, dtype=g.dtype)
        BT, BC = _launch(F, w, backward=True)
        _lagged_keys_bwd_kernel[(triton.cdiv(T, BT), B * H, triton.cdiv(F, BC))](
            fk, g, dk, dfk, dg, T, F, w, H, g.stride(0), g.stride(1), g.stride(2), BT=BT, BC=BC, num_warps=4)
        return dfk, dg, None


def lagged_keys_train(fk, v, g, window: int, ones: bool = True):
    """Same contract as linearize.attention.hybrid.lagged_keys, with autograd: the gated keys through
    ``LaggedKeys`` (one kernel each way instead of the compiled glue's cumsums, flips and pads), the
    shifted values through PyTorch. Without a gate (Hedgehog) there is no window sum: the compiled
    reference, as before."""
    from linearize.attention.hybrid import lagged_keys, lagged_values

    if g is None:
        return lagged_keys(fk, v, None, window, ones)
    return LaggedKeys.apply(fk, g, window), lagged_values(v, window, ones)


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
    return _gated_lagged_keys(fk, g, w)[0], vv


def _gated_lagged_keys(fk, g, w: int):
    """The forward kernel's launch: (k', fk and g as the kernel read them)."""
    B, H, T, F = fk.shape
    fk = fk.contiguous()
    if g.stride(-1) != 1:
        g = g.contiguous()
    # g is read through its strides: a heads-first view of [B, T, H, F] needs no contiguous copy
    # (fp32, 1.2 GB a layer at B16 x 16K, which cost more than this kernel)
    kk = torch.empty_like(fk)
    BT, BC = _launch(F, w)
    _lagged_keys_kernel[(triton.cdiv(T, BT), B * H, triton.cdiv(F, BC))](
        fk, g, kk, T, F, w, H, g.stride(0), g.stride(1), g.stride(2), BT=BT, BC=BC, num_warps=4)
    return kk, fk, g
