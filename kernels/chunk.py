"""Triton chunked gated linear attention (forward and backward) with autograd, and the hybrid /
GSA chunked forms built on it.

Same math as linearize.attention.gla.gla_chunked: inside a chunk of BT steps the decays are taken
relative to the chunk start (q e^{G}, k e^{-G}, v e^{-Gv}); a [K, V] fp32 state is carried between
chunks. Four kernels (fused_chunk.py has the variant that keeps the state in registers, which
gla_chunked_triton uses where it applies):

  fwd_h   per (value block, head): walks the chunks, stores the state at each chunk start
  fwd_o   per (value block, chunk, head): o = q_in h_n + tril(q_in k_in^T) v_in
  bwd_dh  per (value block, head): walks the chunks backwards, stores dL/d(state at chunk end)
  bwd_dqkv per (chunk, head): dq, dk, dv from the stored states and their gradients

The gate gradients come from the identity dL/dG_t = q_t dq_t - k_t dk_t (key gate) and
o_t do_t - v_t dv_t (value gate) plus the final state's term, reverse-cumsummed over time.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from linearize.attention.fusion import fused

from . import fused_chunk


@triton.jit
def _fwd_h_kernel(k_ptr, v_ptr, gk_ptr, gv_ptr, h0_ptr, h_ptr, hT_ptr,
                  T, K, V, NT,
                  HAS_GK: tl.constexpr, HAS_GV: tl.constexpr, HAS_H0: tl.constexpr,
                  BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, TAIL1: tl.constexpr):
    # TAIL1: V = n * BV + 1 (the hybrids' normaliser column) and the grid has n value blocks; the
    # first one also carries column V - 1 as a [BK] vector, instead of a second block that would
    # re-read k and the gate for one column
    iv = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    ok_ = tl.program_id(2) * BK + tl.arange(0, BK)  # state rows of this program
    ov = iv * BV + tl.arange(0, BV)
    ot = tl.arange(0, BT)
    mk = ok_ < K
    mv = ov < V
    mkv = mk[:, None] & mv[None, :]
    mt = mk & ((ok_ * 0 + iv) == 0)  # the tail's rows: only the first value block carries it
    hc = tl.zeros([BK], dtype=tl.float32)
    if HAS_H0:
        h = tl.load(h0_ptr + bh * K * V + ok_[:, None] * V + ov[None, :], mask=mkv, other=0.).to(tl.float32)
        if TAIL1:
            hc = tl.load(h0_ptr + bh * K * V + ok_ * V + V - 1, mask=mt, other=0.).to(tl.float32)
    else:
        h = tl.zeros([BK, BV], dtype=tl.float32)
    for n in range(NT):
        tl.store(h_ptr + (bh * NT + n) * K * V + ok_[:, None] * V + ov[None, :], h.to(h_ptr.dtype.element_ty), mask=mkv)
        if TAIL1:
            tl.store(h_ptr + (bh * NT + n) * K * V + ok_ * V + V - 1, hc.to(h_ptr.dtype.element_ty), mask=mt)
        t = n * BT + ot
        kc = tl.load(k_ptr + (bh * T + t[:, None]) * K + ok_[None, :], mask=mk[None, :], other=0.)
        vc = tl.load(v_ptr + (bh * T + t[:, None]) * V + ov[None, :], mask=mv[None, :], other=0.)
        if HAS_GK:
            gk = tl.load(gk_ptr + (bh * T + t[:, None]) * K + ok_[None, :], mask=mk[None, :], other=0.)
            gkl = tl.load(gk_ptr + (bh * T + n * BT + BT - 1) * K + ok_, mask=mk, other=0.)
            kc = (kc * tl.exp(gkl[None, :] - gk)).to(kc.dtype)
            h = h * tl.exp(gkl)[:, None]
            hc = hc * tl.exp(gkl)
        if HAS_GV:
            gv = tl.load(gv_ptr + (bh * T + t[:, None]) * V + ov[None, :], mask=mv[None, :], other=0.)
            gvl = tl.load(gv_ptr + (bh * T + n * BT + BT - 1) * V + ov, mask=mv, other=0.)
            vc = (vc * tl.exp(gvl[None, :] - gv)).to(vc.dtype)
            h = h * tl.exp(gvl)[None, :]
        h += tl.dot(tl.trans(kc), vc)
        if TAIL1:  # (the other value blocks compute it too, and store nothing)
            vt = tl.load(v_ptr + (bh * T + t) * V + V - 1).to(vc.dtype).to(tl.float32)  # rounded as the dot's operand
            hc += tl.sum(kc.to(tl.float32) * vt[:, None], 0)
    tl.store(hT_ptr + bh * K * V + ok_[:, None] * V + ov[None, :], h, mask=mkv)
    if TAIL1:
        tl.store(hT_ptr + bh * K * V + ok_ * V + V - 1, hc, mask=mt)


@triton.jit
def _fwd_o_kernel(q_ptr, k_ptr, v_ptr, gk_ptr, gv_ptr, h_ptr, o_ptr,
                  T, K, V, NT,
                  HAS_GK: tl.constexpr, HAS_GV: tl.constexpr,
                  BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, TAIL1: tl.constexpr):
    iv = tl.program_id(0)
    n = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    ok_ = tl.arange(0, BK)
    ov = iv * BV + tl.arange(0, BV)
    ot = tl.arange(0, BT)
    mk = ok_ < K
    mv = ov < V
    t = n * BT + ot
    qc = tl.load(q_ptr + (bh * T + t[:, None]) * K + ok_[None, :], mask=mk[None, :], other=0.)
    kc = tl.load(k_ptr + (bh * T + t[:, None]) * K + ok_[None, :], mask=mk[None, :], other=0.)
    vc = tl.load(v_ptr + (bh * T + t[:, None]) * V + ov[None, :], mask=mv[None, :], other=0.)
    if HAS_GK:
        gk = tl.load(gk_ptr + (bh * T + t[:, None]) * K + ok_[None, :], mask=mk[None, :], other=0.)
        qc = (qc * tl.exp(gk)).to(qc.dtype)
        kc = (kc * tl.exp(-gk)).to(kc.dtype)
    if HAS_GV:
        gv = tl.load(gv_ptr + (bh * T + t[:, None]) * V + ov[None, :], mask=mv[None, :], other=0.)
        vc = (vc * tl.exp(-gv)).to(vc.dtype)
    h = tl.load(h_ptr + (bh * NT + n) * K * V + ok_[:, None] * V + ov[None, :], mask=mk[:, None] & mv[None, :], other=0.)
    A = tl.dot(qc, tl.trans(kc))
    A = tl.where(ot[:, None] >= ot[None, :], A, 0.).to(vc.dtype)
    o = tl.dot(qc, h.to(qc.dtype)) + tl.dot(A, vc)
    if HAS_GV:
        o = o * tl.exp(gv)
    tl.store(o_ptr + (bh * T + t[:, None]) * V + ov[None, :], o.to(o_ptr.dtype.element_ty), mask=mv[None, :])
    if TAIL1:  # column V - 1 (see _fwd_h_kernel), from the operands already in registers
        if iv == 0:
            hc = tl.load(h_ptr + (bh * NT + n) * K * V + ok_ * V + V - 1, mask=mk, other=0.).to(qc.dtype).to(tl.float32)
            vt = tl.load(v_ptr + (bh * T + t) * V + V - 1).to(vc.dtype).to(tl.float32)
            oc = tl.sum(qc.to(tl.float32) * hc[None, :], 1) + tl.sum(A.to(tl.float32) * vt[None, :], 1)
            tl.store(o_ptr + (bh * T + t) * V + V - 1, oc.to(o_ptr.dtype.element_ty))


@triton.jit
def _bwd_dh_kernel(q_ptr, do_ptr, gk_ptr, gv_ptr, dhT_ptr, dh_ptr, dh0_ptr,
                   T, K, V, NT,
                   HAS_GK: tl.constexpr, HAS_GV: tl.constexpr, HAS_DHT: tl.constexpr,
                   BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    iv = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    ok_ = tl.program_id(2) * BK + tl.arange(0, BK)  # state rows of this program
    ov = iv * BV + tl.arange(0, BV)
    ot = tl.arange(0, BT)
    mk = ok_ < K
    mv = ov < V
    mkv = mk[:, None] & mv[None, :]
    if HAS_DHT:
        dh = tl.load(dhT_ptr + bh * K * V + ok_[:, None] * V + ov[None, :], mask=mkv, other=0.).to(tl.float32)
    else:
        dh = tl.zeros([BK, BV], dtype=tl.float32)
    for i in range(NT):
        n = NT - 1 - i
        tl.store(dh_ptr + (bh * NT + n) * K * V + ok_[:, None] * V + ov[None, :], dh.to(dh_ptr.dtype.element_ty), mask=mkv)
        t = n * BT + ot
        qc = tl.load(q_ptr + (bh * T + t[:, None]) * K + ok_[None, :], mask=mk[None, :], other=0.)
        dc = tl.load(do_ptr + (bh * T + t[:, None]) * V + ov[None, :], mask=mv[None, :], other=0.)
        if HAS_GK:
            gk = tl.load(gk_ptr + (bh * T + t[:, None]) * K + ok_[None, :], mask=mk[None, :], other=0.)
            gkl = tl.load(gk_ptr + (bh * T + n * BT + BT - 1) * K + ok_, mask=mk, other=0.)
            qc = (qc * tl.exp(gk)).to(qc.dtype)
            dh = dh * tl.exp(gkl)[:, None]
        if HAS_GV:
            gv = tl.load(gv_ptr + (bh * T + t[:, None]) * V + ov[None, :], mask=mv[None, :], other=0.)
            gvl = tl.load(gv_ptr + (bh * T + n * BT + BT - 1) * V + ov, mask=mv, other=0.)
            dc = (dc * tl.exp(gv)).to(dc.dtype)
            dh = dh * tl.exp(gvl)[None, :]
        dh += tl.dot(tl.trans(qc), dc.to(qc.dtype))
    tl.store(dh0_ptr + bh * K * V + ok_[:, None] * V + ov[None, :], dh, mask=mkv)


@triton.jit
def _bwd_dqkv_kernel(q_ptr, k_ptr, v_ptr, gk_ptr, gv_ptr, h_ptr, dh_ptr, do_ptr,
                     dq_ptr, dk_ptr, dv_ptr,
                     T, K, V, NT,
                     HAS_GK: tl.constexpr, HAS_GV: tl.constexpr, NEED_DV: tl.constexpr,
                     BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    ok_ = tl.arange(0, BK)
    ot = tl.arange(0, BT)
    mk = ok_ < K
    t = n * BT + ot
    qc = tl.load(q_ptr + (bh * T + t[:, None]) * K + ok_[None, :], mask=mk[None, :], other=0.)
    kc = tl.load(k_ptr + (bh * T + t[:, None]) * K + ok_[None, :], mask=mk[None, :], other=0.)
    dt = qc.dtype
    if HAS_GK:
        gk = tl.load(gk_ptr + (bh * T + t[:, None]) * K + ok_[None, :], mask=mk[None, :], other=0.)
        gkl = tl.load(gk_ptr + (bh * T + n * BT + BT - 1) * K + ok_, mask=mk, other=0.)
        q_in = (qc * tl.exp(gk)).to(dt)
        k_in = (kc * tl.exp(-gk)).to(dt)
        k_out = (kc * tl.exp(gkl[None, :] - gk)).to(dt)
    else:
        q_in = qc
        k_in = kc
        k_out = kc
    A = tl.dot(q_in, tl.trans(k_in))
    causal = ot[:, None] >= ot[None, :]
    A = tl.where(causal, A, 0.).to(dt)
    dq = tl.zeros([BT, BK], dtype=tl.float32)
    dk = tl.zeros([BT, BK], dtype=tl.float32)
    dA = tl.zeros([BT, BT], dtype=tl.float32)
    for v0 in range(0, V, BV):
        ov = v0 + tl.arange(0, BV)
        mv = ov < V
        mkv = mk[:, None] & mv[None, :]
        vc = tl.load(v_ptr + (bh * T + t[:, None]) * V + ov[None, :], mask=mv[None, :], other=0.)
        dc = tl.load(do_ptr + (bh * T + t[:, None]) * V + ov[None, :], mask=mv[None, :], other=0.)
        if HAS_GV:
            gv = tl.load(gv_ptr + (bh * T + t[:, None]) * V + ov[None, :], mask=mv[None, :], other=0.)
            gvl = tl.load(gv_ptr + (bh * T + n * BT + BT - 1) * V + ov, mask=mv, other=0.)
            e_in = tl.exp(-gv)
            e_out = tl.exp(gvl[None, :] - gv)
            v_in = (vc * e_in).to(dt)
            v_out = (vc * e_out).to(dt)
            dc = (dc * tl.exp(gv)).to(dt)
        else:
            v_in = vc.to(dt)
            v_out = vc.to(dt)
            dc = dc.to(dt)
        h = tl.load(h_ptr + (bh * NT + n) * K * V + ok_[:, None] * V + ov[None, :], mask=mkv, other=0.).to(dt)
        dh = tl.load(dh_ptr + (bh * NT + n) * K * V + ok_[:, None] * V + ov[None, :], mask=mkv, other=0.).to(dt)
        dq += tl.dot(dc, tl.trans(h))
        dA += tl.dot(dc, tl.trans(v_in))
        dk += tl.dot(v_out, tl.trans(dh))
        if NEED_DV:  # off when v needs no gradient (stage 1: frozen v_proj on detached inputs)
            dv_in = tl.dot(tl.trans(A), dc)
            dv_out = tl.dot(k_out, dh)
            if HAS_GV:
                dv = dv_in * e_in + dv_out * e_out
            else:
                dv = dv_in + dv_out
            tl.store(dv_ptr + (bh * T + t[:, None]) * V + ov[None, :], dv.to(dv_ptr.dtype.element_ty), mask=mv[None, :])
    dA = tl.where(causal, dA, 0.).to(dt)
    dq += tl.dot(dA, k_in)
    dk_in = tl.dot(tl.trans(dA), q_in)
    if HAS_GK:
        dq = dq * tl.exp(gk)
        dk = dk * tl.exp(gkl[None, :] - gk) + dk_in * tl.exp(-gk)
    else:
        dk = dk + dk_in
    tl.store(dq_ptr + (bh * T + t[:, None]) * K + ok_[None, :], dq.to(dq_ptr.dtype.element_ty), mask=mk[None, :])
    tl.store(dk_ptr + (bh * T + t[:, None]) * K + ok_[None, :], dk.to(dk_ptr.dtype.element_ty), mask=mk[None, :])


# The state walks (fwd_h, bwd_dh) are sequential over chunks: split the state's rows over programs
# too, so a [B*H] grid of short sequences still fills the GPU (the rows are independent).
STATE_BK = int(os.environ.get("LINEARIZE_STATE_BK", "64"))
# LINEARIZE_GLA_TAIL=0: the normaliser column in a value block of its own (the layout before session 11)
TAIL_COLUMN = os.environ.get("LINEARIZE_GLA_TAIL", "1") != "0"


def no_autograd(*tensors) -> bool:
    """True when no autograd graph runs through ``tensors`` (None entries ignored): the condition under
    which the forward-only kernels (rope, feature map, RMSNorm, lagged keys) may replace a reference.
    Shared by their ``supports`` predicates."""
    return not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))


def pow2_block(x: int, lo: int = 16) -> int:
    """The block that covers a dimension of x: a power of two, at least lo (tl.dot wants every
    dimension >= 16). Shared by the chunk, window and decode kernels."""
    return max(lo, triton.next_power_of_2(int(x)))


def _prep(q, k, v, gk, gv, BT):
    """Flatten heads, pad T to whole chunks, chunk-local cumsum of the gates (fp32)."""
    B, H, T, K = q.shape
    V = v.shape[-1]
    NT = -(-T // BT)
    Tp = NT * BT
    pad = Tp - T

    def flat(x, c):
        if x is None:
            return None
        x = x.reshape(B * H, T, c)
        if pad:
            x = torch.nn.functional.pad(x, (0, 0, 0, pad))
        return x.contiguous()

    def cum(g, c):
        return None if g is None else _chunk_cumsum(g, BT, pad)

    return flat(q, K), flat(k, K), flat(v, V), cum(gk, K), cum(gv, V), (B, H, T, K, V, NT, Tp)


@fused
def _chunk_cumsum(g, BT: int, pad: int):
    """g: [B, H, T, C] -> chunk-local inclusive cumsum, float32, flattened and padded: [B*H, Tp, C]."""
    B, H, T, C = g.shape
    g = torch.nn.functional.pad(g.float().reshape(B * H, T, C), (0, 0, 0, pad))
    return g.view(B * H, -1, BT, C).cumsum(2).view(B * H, T + pad, C).contiguous()


@fused
def _gate_grad(a, da, b, db):
    """dL/dg of a gate from dL/dG_t = a_t da_t - b_t db_t ([N, T, C]), reverse-cumsummed over time:
    (q, dq, k, dk) for the key gate, (o, do, v, dv) for the value gate."""
    dG = a.float() * da.float() - b.float() * db.float()
    return dG.flip(1).cumsum(1).flip(1)


def _blocks(K, V):
    BK = pow2_block(K)
    BV = 64 if V > 32 else pow2_block(V)
    if BK > 128:
        BV = 32
    return BK, BV


def gla_fwd(q, k, v, gkc, gvc, h0, dims, BT):
    B, H, T, K, V, NT, Tp = dims
    BH = B * H
    BK, BV = _blocks(K, V)
    dev = q.device
    # the chunks' states are stored in the inputs' dtype: fwd_o and bwd_dqkv cast them to it for their
    # dots anyway (the walks keep theirs in fp32), so bf16 storage halves the traffic and changes nothing
    h = torch.empty(BH, NT, K, V, device=dev, dtype=q.dtype)
    hT = torch.empty(BH, K, V, device=dev, dtype=torch.float32)
    o = torch.empty(BH, Tp, V, device=dev, dtype=q.dtype)
    dummy = h
    BKS = min(BK, STATE_BK)
    # the hybrids' values carry a normaliser column (V = 65 for 64-wide heads): that column rides
    # along in the first value block rather than costing a second block
    tail1 = gvc is None and V > BV and V % BV == 1 and TAIL_COLUMN
    nv = V // BV if tail1 else triton.cdiv(V, BV)
    _fwd_h_kernel[(nv, BH, triton.cdiv(K, BKS))](
        k, v, gkc if gkc is not None else dummy, gvc if gvc is not None else dummy,
        h0 if h0 is not None else dummy, h, hT, Tp, K, V, NT,
        HAS_GK=gkc is not None, HAS_GV=gvc is not None, HAS_H0=h0 is not None,
        BT=BT, BK=BKS, BV=BV, TAIL1=tail1, num_warps=4)
    _fwd_o_kernel[(nv, NT, BH)](
        q, k, v, gkc if gkc is not None else dummy, gvc if gvc is not None else dummy, h, o, Tp, K, V, NT,
        HAS_GK=gkc is not None, HAS_GV=gvc is not None, BT=BT, BK=BK, BV=BV, TAIL1=tail1, num_warps=4)
    return o, h, hT


def gla_bwd(q, k, v, gkc, gvc, h, do, dhT, dims, BT, need_dv=True):
    B, H, T, K, V, NT, Tp = dims
    BH = B * H
    BK, BV = _blocks(K, V)
    dev = q.device
    dh = torch.empty(BH, NT, K, V, device=dev, dtype=q.dtype)  # stored like h (see gla_fwd)
    dh0 = torch.empty(BH, K, V, device=dev, dtype=torch.float32)
    dummy = dh
    BKS = min(BK, STATE_BK)
    _bwd_dh_kernel[(triton.cdiv(V, BV), BH, triton.cdiv(K, BKS))](
        q, do, gkc if gkc is not None else dummy, gvc if gvc is not None else dummy,
        dhT if dhT is not None else dummy, dh, dh0, Tp, K, V, NT,
        HAS_GK=gkc is not None, HAS_GV=gvc is not None, HAS_DHT=dhT is not None,
        BT=BT, BK=BKS, BV=BV, num_warps=4)
    dq = torch.empty(BH, Tp, K, device=dev, dtype=torch.float32)
    dk = torch.empty(BH, Tp, K, device=dev, dtype=torch.float32)
    # a value gate's gradient reads dv: computed whenever there is one
    need_dv = need_dv or gvc is not None
    dv = torch.empty(BH, Tp, V, device=dev, dtype=torch.float32) if need_dv else None
    _bwd_dqkv_kernel[(NT, BH)](
        q, k, v, gkc if gkc is not None else dummy, gvc if gvc is not None else dummy, h, dh, do,
        dq, dk, dv if need_dv else dummy, Tp, K, V, NT,
        HAS_GK=gkc is not None, HAS_GV=gvc is not None, NEED_DV=need_dv,
        BT=BT, BK=BK, BV=32 if BK > 64 else min(BV, 64),
        num_warps=4 if BK <= 64 else 8, num_stages=1)
    return dq, dk, dv, dh0


class ChunkGLAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, gk, gv, h0, BT):
        qf, kf, vf, gkc, gvc, dims = _prep(q, k, v, gk, gv, BT)
        h0f = None if h0 is None else h0.reshape(-1, *h0.shape[-2:]).float().contiguous()
        o, h, hT = gla_fwd(qf, kf, vf, gkc, gvc, h0f, dims, BT)
        B, H, T, K, V, NT, Tp = dims
        o = o.view(B, H, Tp, V)[:, :, :T]
        S = hT.view(B, H, K, V)
        ctx.save_for_backward(qf, kf, vf, gkc, gvc, h, o, S)
        ctx.dims, ctx.BT = dims, BT
        ctx.flags = (gk is not None, gv is not None, h0 is not None, q.dtype, k.dtype, v.dtype,
                     None if gk is None else gk.dtype, None if gv is None else gv.dtype,
                     None if h0 is None else h0.dtype)
        return o, S

    @staticmethod
    def backward(ctx, do, dS):
        qf, kf, vf, gkc, gvc, h, o, S = ctx.saved_tensors
        B, H, T, K, V, NT, Tp = ctx.dims
        has_gk, has_gv, has_h0, qdt, kdt, vdt, gkdt, gvdt, h0dt = ctx.flags
        if do is None:
            do = torch.zeros_like(o)
        dof = do.reshape(B * H, T, V).to(qf.dtype)
        if Tp > T:
            dof = torch.nn.functional.pad(dof, (0, 0, 0, Tp - T))
        dof = dof.contiguous()
        dhT = None if dS is None else dS.reshape(B * H, K, V).float().contiguous()
        dq, dk, dv, dh0 = gla_bwd(qf, kf, vf, gkc, gvc, h, dof, dhT, ctx.dims, ctx.BT, need_dv=ctx.needs_input_grad[2])
        dq, dk = dq[:, :T], dk[:, :T]
        dv = None if dv is None else dv[:, :T]
        dgk = dgv = None
        if has_gk:
            dgk = _gate_grad(qf[:, :T], dq, kf[:, :T], dk)
            if dS is not None:  # the final state's term reaches every step's gate (it sits at t = T-1)
                dgk = dgk + (dS.float() * S).sum(-1).reshape(B * H, 1, K)
            dgk = dgk.view(B, H, T, K).to(gkdt)
        if has_gv:
            dgv = _gate_grad(o.reshape(B * H, T, V), do.reshape(B * H, T, V), vf[:, :T], dv)
            if dS is not None:
                dgv = dgv + (dS.float() * S).sum(-2).reshape(B * H, 1, V)
            dgv = dgv.view(B, H, T, V).to(gvdt)
        return (dq.view(B, H, T, K).to(qdt), dk.view(B, H, T, K).to(kdt),
                dv.view(B, H, T, V).to(vdt) if ctx.needs_input_grad[2] else None,
                dgk, dgv, dh0.view(B, H, K, V).to(h0dt) if has_h0 else None, None)


def chunk_size_for(chunk_size: int) -> int | None:
    """The kernel's chunk: a power of two in [16, 64] no larger than the caller's (which bounds the
    in-chunk decay), or None when the caller's chunk is below 16 (the reference then runs)."""
    if chunk_size < 16:
        return None
    return min(64, 1 << (int(chunk_size).bit_length() - 1))


# "fused": the walk that keeps the state in registers (fused_chunk.py) where it measured faster
# (fused_chunk.supports: no value gate, keys and values at most 64 wide), these kernels elsewhere;
# "stored": these kernels, which store every chunk's state, always
GLA_KERNELS = os.environ.get("LINEARIZE_GLA", "fused")


# Keys wider than this run as separate groups of at most this many features. A row of the state
# evolves on its own (S_t = diag(a_t) S_{t-1} diag(b_t) + k_t v_t^T acts row by row), so the output
# is the sum of the groups' outputs and the state their concatenation. Why: _fwd_o_kernel compiled
# for 256-wide keys (BK 256, BV 32) faults on the H100 with an out-of-range shared-memory address
# (compute-sanitizer, benchmarks/check_feature_dim_scoring.py; the feature_dim=128 Lizard), while
# 128-wide keys run every shipped recipe.
MAX_KEY_GROUP = 128


def gla_chunked_triton(q, k, v, gk=None, gv=None, initial_state=None, chunk_size: int = 64):
    """Same contract as linearize.attention.gla.gla_chunked."""
    BT = chunk_size_for(chunk_size)
    if BT is None:
        from linearize.attention.gla import gla_chunked
        return gla_chunked(q, k, v, gk, gv, initial_state, chunk_size)
    K = q.shape[-1]
    if K > MAX_KEY_GROUP:
        outs, states = [], []
        for s in range(0, K, MAX_KEY_GROUP):
            part = slice(s, s + MAX_KEY_GROUP)
            o, S = gla_chunked_triton(q[..., part], k[..., part], v, None if gk is None else gk[..., part], gv,
                                      None if initial_state is None else initial_state[..., part, :], chunk_size)
            outs.append(o.float())
            states.append(S)
        return sum(outs).to(q.dtype), torch.cat(states, dim=-2)
    if GLA_KERNELS == "fused" and fused_chunk.supports(q, v, gv):
        return fused_chunk.FusedChunkGLA.apply(q, k, v, gk, initial_state, BT)
    return gla_chunked_stored(q, k, v, gk, gv, initial_state, BT)


def gla_chunked_stored(q, k, v, gk=None, gv=None, initial_state=None, BT: int = 64):
    """The four kernels above (every chunk's state stored), whatever the shapes; BT in [16, 64]."""
    return ChunkGLAFunction.apply(q, k, v, gk, gv, initial_state, BT)


# ------------------------------------------------------------------ the modules' chunked forms

def hybrid_chunked_triton(q, k, v, fq, fk, g, mix, window, scale, valid=None, meta_k=None, meta_v=None,
                          linear_enabled=True, chunk_size=64, return_state=False):
    """Same contract as linearize.attention.hybrid.hybrid_chunked: the linear half runs in the Triton
    GLA kernels, the window half in the Triton window kernels (kernels/window.py)."""
    from linearize.attention import hybrid as ref

    from .lagged_keys import lagged_keys_triton
    from .window import window_chunked_triton

    num_sm, den_sm = window_chunked_triton(q, k, v, scale, window, valid, meta_k, meta_v, chunk_size)
    V = v.shape[-1]
    num_lin = den_lin = S = None
    if linear_enabled or return_state:
        BT = chunk_size_for(chunk_size)
        # without autograd (prefill, scoring) the lagged keys come from their Triton kernel
        lagged = lagged_keys_triton if no_autograd(fk, v, g) else ref.lagged_keys
        if GLA_KERNELS == "fused" and BT is not None and fused_chunk.supports(fq, v):
            # the walk adds the normaliser's ones column itself: values stay one 64-wide block
            kk, vv = lagged(fk, v, g, window, ones=False)
            o_lin, S = fused_chunk.gla_fused_chunk(fq, kk, vv, g, None, BT, normalizer=True)
        else:
            kk, vv = lagged(fk, v, g, window)
            o_lin, S = gla_chunked_triton(fq, kk, vv, gk=g, chunk_size=chunk_size)
        num_lin, den_lin = o_lin[..., :V], o_lin[..., V]
    o = ref.combine(num_sm, den_sm, num_lin, den_lin, mix, linear_enabled)
    if not return_state:
        return o
    return o, ref.ring_state_from_sequence(k, v, fk, g, valid, window, S.detach())


def hybrid_chunked_continue_triton(state, q, k, v, fq, fk, g, mix, window, scale, valid=None, meta_k=None,
                                   meta_v=None, linear_enabled=True, chunk_size=64):
    """Same contract as linearize.attention.hybrid.hybrid_chunked_continue, on the Triton window and
    GLA kernels."""
    from linearize.attention import hybrid as ref

    from .window import window_chunked_triton

    return ref.hybrid_chunked_continue(state, q, k, v, fq, fk, g, mix, window, scale, valid, meta_k, meta_v,
                                       linear_enabled, chunk_size, window_fn=window_chunked_triton,
                                       gla_fn=gla_chunked_triton)


def gsa_chunked_triton(q, k, v, g, scale, state=None, chunk_size=64):
    """Same contract as linearize.attention.gated_slots.gsa_chunked."""
    from linearize.attention.gated_slots import _two_passes

    def gla(*a, **kw):
        return gla_chunked_triton(*a, **kw)

    return _two_passes(gla, q, k, v, g, scale, state, chunk_size=chunk_size)
