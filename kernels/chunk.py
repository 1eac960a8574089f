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

The gates come in raw (log-decays, any float dtype) and every kernel sums its chunk's rows in
registers, so no cumsum is ever stored. Their gradients come from the identity dL/dG_t = q_t dq_t -
k_t dk_t (key gate) or o_t do_t - v_t dv_t (value gate), reverse-summed over time: bwd_dqkv sums it
over its chunk and adds what the later chunks contribute, which is <state at the chunk's end, dh>
(see the kernel). Every gradient is written once, in its input's dtype; T need not be a multiple of
the chunk (rows past T load as zeros: no write, no decay).
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from . import fused_chunk
from .fused_chunk import _chunk_gate, _col, _load


@triton.jit
def _fwd_h_kernel(k_ptr, v_ptr, gk_ptr, gv_ptr, h0_ptr, h_ptr, hT_ptr, z0_ptr, z_ptr, zT_ptr,
                  T, K, V, NT,
                  HAS_GK: tl.constexpr, HAS_GV: tl.constexpr, HAS_H0: tl.constexpr,
                  BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, TAIL1: tl.constexpr,
                  ONES: tl.constexpr):
    # TAIL1: V = n * BV + 1 (the hybrids' normaliser column) and the grid has n value blocks; the
    # first one also carries column V - 1 as a [BK] vector, instead of a second block that would
    # re-read k and the gate for one column.
    # ONES: v has an implicit ones column after its V columns (the normaliser, never stored): the first
    # value block carries its state column z = sum_t k_out as a [BK] vector, stored apart (z, z0, zT:
    # fp32 [K] per chunk and head), so v and h keep V = 64 aligned columns
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
        if ONES:
            hc = tl.load(z0_ptr + bh * K + ok_, mask=mt, other=0.)
    else:
        h = tl.zeros([BK, BV], dtype=tl.float32)
    for n in range(NT):
        tl.store(h_ptr + (bh * NT + n) * K * V + ok_[:, None] * V + ov[None, :], h.to(h_ptr.dtype.element_ty), mask=mkv)
        if TAIL1:
            tl.store(h_ptr + (bh * NT + n) * K * V + ok_ * V + V - 1, hc.to(h_ptr.dtype.element_ty), mask=mt)
        if ONES:
            tl.store(z_ptr + (bh * NT + n) * K + ok_, hc, mask=mt)
        t = n * BT + ot
        kc = _load(k_ptr + bh * T * K, t, ok_, T, K, K)
        vc = _load(v_ptr + bh * T * V, t, ov, T, V, V)
        if HAS_GK:
            G, gkl = _chunk_gate(gk_ptr + bh * T * K, t, ok_, T, K)
            kc = (kc * tl.exp(gkl[None, :] - G)).to(kc.dtype)
            h = h * tl.exp(gkl)[:, None]
            hc = hc * tl.exp(gkl)
        if HAS_GV:
            Gv, gvl = _chunk_gate(gv_ptr + bh * T * V, t, ov, T, V)
            vc = (vc * tl.exp(gvl[None, :] - Gv)).to(vc.dtype)
            h = h * tl.exp(gvl)[None, :]
        h += tl.dot(tl.trans(kc), vc)
        if TAIL1:  # (the other value blocks compute it too, and store nothing)
            vt = _col(v_ptr + bh * T * V, t, V - 1, T, V)
            hc += tl.sum(kc.to(tl.float32) * vt[:, None], 0)  # vt rounded as the dot's operand
        if ONES:  # rows past T load as zero keys
            hc += tl.sum(kc.to(tl.float32), 0)
    tl.store(hT_ptr + bh * K * V + ok_[:, None] * V + ov[None, :], h, mask=mkv)
    if TAIL1:
        tl.store(hT_ptr + bh * K * V + ok_ * V + V - 1, hc, mask=mt)
    if ONES:
        tl.store(zT_ptr + bh * K + ok_, hc, mask=mt)


@triton.jit
def _fwd_o_kernel(q_ptr, k_ptr, v_ptr, gk_ptr, gv_ptr, h_ptr, o_ptr, z_ptr, den_ptr,
                  T, K, V, NT,
                  HAS_GK: tl.constexpr, HAS_GV: tl.constexpr,
                  BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, TAIL1: tl.constexpr,
                  ONES: tl.constexpr):
    # ONES (see _fwd_h_kernel): the ones column's output, den = q_in z_n + rowsum(tril(q_in k_in^T)),
    # goes to den [N, T] (o keeps V aligned columns)
    iv = tl.program_id(0)
    n = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    ok_ = tl.arange(0, BK)
    ov = iv * BV + tl.arange(0, BV)
    ot = tl.arange(0, BT)
    mk = ok_ < K
    mv = ov < V
    t = n * BT + ot
    ti = (t < T)[:, None]
    qc = _load(q_ptr + bh * T * K, t, ok_, T, K, K)
    kc = _load(k_ptr + bh * T * K, t, ok_, T, K, K)
    vc = _load(v_ptr + bh * T * V, t, ov, T, V, V)
    if HAS_GK:
        G, _ = _chunk_gate(gk_ptr + bh * T * K, t, ok_, T, K)
        qc = (qc * tl.exp(G)).to(qc.dtype)
        kc = (kc * tl.exp(-G)).to(kc.dtype)
    if HAS_GV:
        Gv, _ = _chunk_gate(gv_ptr + bh * T * V, t, ov, T, V)
        vc = (vc * tl.exp(-Gv)).to(vc.dtype)
    h = tl.load(h_ptr + (bh * NT + n) * K * V + ok_[:, None] * V + ov[None, :], mask=mk[:, None] & mv[None, :], other=0.)
    A = tl.dot(qc, tl.trans(kc))
    A = tl.where(ot[:, None] >= ot[None, :], A, 0.).to(vc.dtype)
    o = tl.dot(qc, h.to(qc.dtype)) + tl.dot(A, vc)
    if HAS_GV:
        o = o * tl.exp(Gv)
    tl.store(o_ptr + (bh * T + t[:, None]) * V + ov[None, :], o.to(o_ptr.dtype.element_ty), mask=ti & mv[None, :])
    if ONES:
        if iv == 0:
            zn = tl.load(z_ptr + (bh * NT + n) * K + ok_, mask=mk, other=0.)
            oc = tl.sum(qc.to(tl.float32) * zn[None, :], 1) + tl.sum(A.to(tl.float32), 1)
            tl.store(den_ptr + bh * T + t, oc.to(den_ptr.dtype.element_ty), mask=t < T)
    if TAIL1:  # column V - 1 (see _fwd_h_kernel), from the operands already in registers
        if iv == 0:
            hc = tl.load(h_ptr + (bh * NT + n) * K * V + ok_ * V + V - 1, mask=mk, other=0.).to(qc.dtype).to(tl.float32)
            vt = _col(v_ptr + bh * T * V, t, V - 1, T, V)
            oc = tl.sum(qc.to(tl.float32) * hc[None, :], 1) + tl.sum(A.to(tl.float32) * vt[None, :], 1)
            tl.store(o_ptr + (bh * T + t) * V + V - 1, oc.to(o_ptr.dtype.element_ty), mask=t < T)


@triton.jit
def _bwd_dh_kernel(q_ptr, do_ptr, gk_ptr, gv_ptr, dhT_ptr, dh_ptr, dh0_ptr, dden_ptr, dzT_ptr, dz_ptr, dz0_ptr,
                   T, K, V, NT,
                   HAS_GK: tl.constexpr, HAS_GV: tl.constexpr, HAS_DHT: tl.constexpr,
                   BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, ONES: tl.constexpr):
    # ONES (see _fwd_h_kernel): the first value block also walks dz, the ones column's state
    # gradient: dz <- e^gkl dz + q_in^T dden (dden [N, T]: the gradient of fwd_o's den)
    iv = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    ok_ = tl.program_id(2) * BK + tl.arange(0, BK)  # state rows of this program
    ov = iv * BV + tl.arange(0, BV)
    ot = tl.arange(0, BT)
    mk = ok_ < K
    mv = ov < V
    mkv = mk[:, None] & mv[None, :]
    mt = mk & ((ok_ * 0 + iv) == 0)  # dz's rows: only the first value block carries it
    dz = tl.zeros([BK], dtype=tl.float32)
    if HAS_DHT:
        dh = tl.load(dhT_ptr + bh * K * V + ok_[:, None] * V + ov[None, :], mask=mkv, other=0.).to(tl.float32)
        if ONES:
            dz = tl.load(dzT_ptr + bh * K + ok_, mask=mt, other=0.)
    else:
        dh = tl.zeros([BK, BV], dtype=tl.float32)
    for i in range(NT):
        n = NT - 1 - i
        tl.store(dh_ptr + (bh * NT + n) * K * V + ok_[:, None] * V + ov[None, :], dh.to(dh_ptr.dtype.element_ty), mask=mkv)
        if ONES:
            tl.store(dz_ptr + (bh * NT + n) * K + ok_, dz, mask=mt)
        t = n * BT + ot
        qc = _load(q_ptr + bh * T * K, t, ok_, T, K, K)
        dc = _load(do_ptr + bh * T * V, t, ov, T, V, V)
        if HAS_GK:
            G, gkl = _chunk_gate(gk_ptr + bh * T * K, t, ok_, T, K)
            qc = (qc * tl.exp(G)).to(qc.dtype)
            dh = dh * tl.exp(gkl)[:, None]
            if ONES:
                dz = dz * tl.exp(gkl)
        if HAS_GV:
            Gv, gvl = _chunk_gate(gv_ptr + bh * T * V, t, ov, T, V)
            dc = (dc * tl.exp(Gv)).to(dc.dtype)
            dh = dh * tl.exp(gvl)[None, :]
        dh += tl.dot(tl.trans(qc), dc.to(qc.dtype))
        if ONES:
            dden = _col(dden_ptr + bh * T, t, 0, T, 1)
            dz += tl.sum(qc.to(tl.float32) * dden[:, None], 0)
    tl.store(dh0_ptr + bh * K * V + ok_[:, None] * V + ov[None, :], dh, mask=mkv)
    if ONES:
        tl.store(dz0_ptr + bh * K + ok_, dz, mask=mt)


@triton.jit
def _bwd_dqkv_kernel(q_ptr, k_ptr, v_ptr, gk_ptr, gv_ptr, h_ptr, dh_ptr, do_ptr, o_ptr, z_ptr, dz_ptr, dden_ptr,
                     dq_ptr, dk_ptr, dv_ptr, dgk_ptr, dgv_ptr,
                     T, K, V, NT,
                     HAS_GK: tl.constexpr, HAS_GV: tl.constexpr, NEED_DV: tl.constexpr,
                     BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                     RELOAD: tl.constexpr, ONES: tl.constexpr):
    # The gates' gradients, in registers: dL/dg_t = sum_{s >= t in the chunk} dG_s + R, with
    # dG = q dq - k dk (key gate) or o do - v dv (value gate), and R = dL/d(first gate of the next
    # chunk) = <state at the chunk's end, dh> summed over the other axis (scaling that gate scales
    # the state it multiplies); the state at the end is e^Gl h_n + k_out^T v_out, so
    #   R_k = e^gkl sum_v h_n dh e^gvl + sum_t k_out (v_out dh^T),   R_v likewise with k and v swapped.
    # ONES (see _fwd_h_kernel; no value gate): the ones column is one more value column, v = 1 on
    # rows < T, with state z_n and gradient dz_n: dq += dden z_n, dA += dden, dk_out += dz_n and
    # R_k += z_n dz_n, where dden [N, T] is the gradient of fwd_o's den
    n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    ok_ = tl.arange(0, BK)
    ot = tl.arange(0, BT)
    mk = ok_ < K
    t = n * BT + ot
    ti = (t < T)[:, None]
    qc = _load(q_ptr + bh * T * K, t, ok_, T, K, K)
    kc = _load(k_ptr + bh * T * K, t, ok_, T, K, K)
    dt = qc.dtype
    if HAS_GK:
        G, gkl = _chunk_gate(gk_ptr + bh * T * K, t, ok_, T, K)
        q_in = (qc * tl.exp(G)).to(dt)
        k_in = (kc * tl.exp(-G)).to(dt)
        k_out = (kc * tl.exp(gkl[None, :] - G)).to(dt)
    else:
        gkl = tl.zeros([BK], dtype=tl.float32)
        q_in = qc
        k_in = kc
        k_out = kc
    A = tl.dot(q_in, tl.trans(k_in))
    causal = ot[:, None] >= ot[None, :]
    A = tl.where(causal, A, 0.).to(dt)
    dq = tl.zeros([BT, BK], dtype=tl.float32)
    dk = tl.zeros([BT, BK], dtype=tl.float32)
    dA = tl.zeros([BT, BT], dtype=tl.float32)
    rk = tl.zeros([BK], dtype=tl.float32)  # sum_v h_n dh e^gvl (R_k's first term, before e^gkl)
    for v0 in range(0, V, BV):
        ov = v0 + tl.arange(0, BV)
        mv = ov < V
        mkv = mk[:, None] & mv[None, :]
        mtv = ti & mv[None, :]
        vc = _load(v_ptr + bh * T * V, t, ov, T, V, V)
        dr = _load(do_ptr + bh * T * V, t, ov, T, V, V)
        if HAS_GV:
            Gv, gvl = _chunk_gate(gv_ptr + bh * T * V, t, ov, T, V)
            e_in = tl.exp(-Gv)
            e_out = tl.exp(gvl[None, :] - Gv)
            v_in = (vc * e_in).to(dt)
            v_out = (vc * e_out).to(dt)
            dc = (dr * tl.exp(Gv)).to(dt)
        else:
            v_in = vc.to(dt)
            v_out = vc.to(dt)
            dc = dr.to(dt)
        h = tl.load(h_ptr + (bh * NT + n) * K * V + ok_[:, None] * V + ov[None, :], mask=mkv, other=0.).to(dt)
        dh = tl.load(dh_ptr + (bh * NT + n) * K * V + ok_[:, None] * V + ov[None, :], mask=mkv, other=0.).to(dt)
        dq += tl.dot(dc, tl.trans(h))
        dA += tl.dot(dc, tl.trans(v_in))
        dk += tl.dot(v_out, tl.trans(dh))
        if HAS_GK or HAS_GV:
            hdh = h.to(tl.float32) * dh.to(tl.float32)
        if HAS_GK:
            if HAS_GV:
                rk += tl.sum(hdh * tl.exp(gvl)[None, :], 1)
            else:
                rk += tl.sum(hdh, 1)
        if NEED_DV:  # off when v needs no gradient (stage 1: frozen v_proj on detached inputs)
            dv_in = tl.dot(tl.trans(A), dc)
            dv_out = tl.dot(k_out, dh)
            if HAS_GV:
                dv = dv_in * e_in + dv_out * e_out
            else:
                dv = dv_in + dv_out
            tl.store(dv_ptr + (bh * T + t[:, None]) * V + ov[None, :], dv.to(dv_ptr.dtype.element_ty), mask=mtv)
            if HAS_GV:
                oc = _load(o_ptr + bh * T * V, t, ov, T, V, V).to(tl.float32)
                dGv = oc * dr.to(tl.float32) - vc.to(tl.float32) * dv
                rv = tl.exp(gvl) * tl.sum(hdh * tl.exp(gkl)[:, None], 0) + \
                    tl.sum(v_out.to(tl.float32) * dv_out, 0)
                dgv = tl.cumsum(dGv, 0, reverse=True) + rv[None, :]
                tl.store(dgv_ptr + (bh * T + t[:, None]) * V + ov[None, :], dgv.to(dgv_ptr.dtype.element_ty), mask=mtv)
    if ONES:
        dden = _col(dden_ptr + bh * T, t, 0, T, 1)
        zn = tl.load(z_ptr + (bh * NT + n) * K + ok_, mask=mk, other=0.)
        dzn = tl.load(dz_ptr + (bh * NT + n) * K + ok_, mask=mk, other=0.)
        dq += dden[:, None] * zn[None, :]
        dA += dden[:, None]
        dk += tl.where(ti, dzn[None, :], 0.)
        rk += zn * dzn
    if RELOAD:  # q, k and the gate again (L2 hits) rather than holding them in registers through the loop
        qc = _load(q_ptr + bh * T * K, t, ok_, T, K, K)
        kc = _load(k_ptr + bh * T * K, t, ok_, T, K, K)
        if HAS_GK:
            G, gkl = _chunk_gate(gk_ptr + bh * T * K, t, ok_, T, K)
            q_in = (qc * tl.exp(G)).to(dt)
            k_in = (kc * tl.exp(-G)).to(dt)
        else:
            q_in = qc
            k_in = kc
    dA = tl.where(causal, dA, 0.).to(dt)
    dq += tl.dot(dA, k_in)
    dk_in = tl.dot(tl.trans(dA), q_in)
    if HAS_GK:
        dq = dq * tl.exp(G)
        dk_out = dk * tl.exp(gkl[None, :] - G)
        dk = dk_out + dk_in * tl.exp(-G)
        rk = tl.exp(gkl) * rk + tl.sum(kc.to(tl.float32) * dk_out, 0)
        dG = qc.to(tl.float32) * dq - kc.to(tl.float32) * dk
        dgk = tl.cumsum(dG, 0, reverse=True) + rk[None, :]
        tl.store(dgk_ptr + (bh * T + t[:, None]) * K + ok_[None, :], dgk.to(dgk_ptr.dtype.element_ty), mask=ti & mk[None, :])
    else:
        dk = dk + dk_in
    tl.store(dq_ptr + (bh * T + t[:, None]) * K + ok_[None, :], dq.to(dq_ptr.dtype.element_ty), mask=ti & mk[None, :])
    tl.store(dk_ptr + (bh * T + t[:, None]) * K + ok_[None, :], dk.to(dk_ptr.dtype.element_ty), mask=ti & mk[None, :])


# Launch parameters; None = the rule in the function that uses it (each measured on the H100 by
# benchmarks/tune_chunk.py, session 13); a value overrides the rule (the tuning script sets them).
# The state walks (fwd_h, bwd_dh) are sequential over chunks: their state rows are split over
# programs too, so a [B*H] grid of short sequences still fills the GPU (the rows are independent).
STATE_BK = int(os.environ["LINEARIZE_STATE_BK"]) if "LINEARIZE_STATE_BK" in os.environ else None
WALK_WARPS = None
WALK_BV = None  # the walks' value block
WALK_STAGES = None  # None: Triton's default software pipelining of the walks' loads
O_BV = None  # fwd_o's value block
DQKV_BV = None  # bwd_dqkv's value block (keys wider than 64)
DQKV_WARPS = 8
DQKV_STAGES = None
DQKV_RELOAD = None  # bwd_dqkv loads q, k and the gate again after its value loop (see the kernel)
# LINEARIZE_GLA_TAIL=0: the normaliser column in a value block of its own (the layout before session 11)
TAIL_COLUMN = os.environ.get("LINEARIZE_GLA_TAIL", "1") != "0"
# The hybrids' normaliser column implicit in the stored-state kernels (``normalizer``), rather than a
# ones column appended to v; LINEARIZE_GLA_ONES=0 appends it (the layout before session 14)
IMPLICIT_ONES = os.environ.get("LINEARIZE_GLA_ONES", "1") != "0"


def no_autograd(*tensors) -> bool:
    """True when no autograd graph runs through ``tensors`` (None entries ignored): the condition under
    which the forward-only kernels (rope, feature map, RMSNorm, lagged keys) may replace a reference.
    Shared by their ``supports`` predicates."""
    return not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))


def pow2_block(x: int, lo: int = 16) -> int:
    """The block that covers a dimension of x: a power of two, at least lo (tl.dot wants every
    dimension >= 16). Shared by the chunk, window and decode kernels."""
    return max(lo, triton.next_power_of_2(int(x)))


def _blocks(K, V):
    BK = pow2_block(K)
    BV = 64 if V > 32 else pow2_block(V)
    if BK > 128:
        BV = 32
    return BK, BV


def _flat(x):
    """[B, H, T, C] -> [B*H, T, C], contiguous (a view when it already is)."""
    return None if x is None else x.reshape(-1, *x.shape[-2:]).contiguous()


def _value_blocks(V, BV, gv):
    """(number of value blocks, TAIL1) for blocks of BV: the hybrids' values carry a normaliser
    column (V = 65 for 64-wide heads), which rides along in the first value block rather than
    costing a block of its own."""
    tail1 = gv is None and V > BV and V % BV == 1 and TAIL_COLUMN
    return (V // BV if tail1 else triton.cdiv(V, BV)), tail1


def _walk_opts(BK, BV):
    """4 warps, 8 for a [64, 128] fp32 state."""
    opts = dict(num_warps=WALK_WARPS or (8 if BK * BV >= 64 * 128 else 4))
    if WALK_STAGES is not None:
        opts["num_stages"] = WALK_STAGES
    return opts


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def _state_rows(BK, programs, device):
    """State rows per walk program, given the walk's other grid dimensions' ``programs``: 64 rows when
    that gives four programs per SM, else 32 when that gives two, else 16 (fewer rows: more programs,
    each walking the same chunks, so a short grid still fills the GPU). H100, K = 128, fwd+bwd:
    B1 x 32 heads x 4K (V 128): 16 rows 0.89 ms, 32 0.97, 64 1.13; B4: 32 rows 3.28, 64 3.32;
    B16 x 9 heads x 1K (V 65): 32 rows 1.03, 64 1.11."""
    if STATE_BK is not None:
        return min(BK, STATE_BK)
    sms = _sm_count(device)
    if programs * triton.cdiv(BK, 64) >= 4 * sms:
        return min(BK, 64)
    return min(BK, 32 if programs * triton.cdiv(BK, 32) >= 2 * sms else 16)


def _walk_block(V, BV):
    """The walks' value block: all values up to 128 in one block, so each program reads its key rows
    and their gate once per chunk (with blocks of 64 every value block re-read them, and V = 65, the
    hybrids' normaliser column, cost bwd_dh a second block for one column). K = V = 128 at B1:
    0.89 against 1.27 ms fwd+bwd; B4 3.28 against 3.34."""
    if WALK_BV is not None:
        return max(BV, min(WALK_BV, pow2_block(V)))
    return pow2_block(V) if V <= 128 else BV


def _o_block(BK, V, BV):
    """fwd_o's value block: all values up to 128 in one block, so q, k and the gate are read once
    (K = V = 128: 1.08 against 1.10 ms at B1), except the hybrids' V = 64n + 1, whose tail column rides
    along in the first block (a 128 block for V = 65: 1.24 against 1.21 ms, B16 x 9 heads x 1K)."""
    if BK > 128:
        return BV
    if O_BV is not None:
        return max(BV, min(O_BV, pow2_block(V)))
    return pow2_block(V) if V <= 128 and not (V > BV and V % BV == 1) else BV


def _dqkv_opts(BK, V, BV):
    """bwd_dqkv's value block and RELOAD. With keys wider than 64 its [BT, 128] tiles of q, k and their
    gradients fill the registers: values in blocks of 64 when V is a multiple of 64 (K = V = 128:
    1.06 against 1.10 ms at B1, 3.44 against 3.59 ms at B4), else of 32 with q, k reloaded after the
    loop (V = 65: 1.09 against 1.21 ms; a 64 block there costs 1.81 ms). Two pipeline stages there
    (0.93 against 0.95 ms at B1, 3.31 against 3.37 at B4); one with narrower keys, as measured before."""
    if BK <= 64:
        return dict(BV=min(BV, 64), RELOAD=bool(DQKV_RELOAD), num_warps=4, num_stages=DQKV_STAGES or 1)
    ragged = V % 64 != 0
    return dict(BV=DQKV_BV or (32 if ragged else 64), RELOAD=ragged if DQKV_RELOAD is None else DQKV_RELOAD,
                num_warps=DQKV_WARPS, num_stages=DQKV_STAGES or 2)


def gla_fwd(q, k, v, gk, gv, h0, BT, ones=False, z0=None):
    """q, k: [N, T, K]; v: [N, T, V]; gk / gv: raw log-decays like k / v, or None; h0: [N, K, V] fp32
    or None. Returns (o [N, T, V] in q's dtype, the chunks' states [N, NT, K, V], final state fp32,
    den, z, zT). ``ones`` (no value gate): v has an implicit ones column, whose output is den [N, T]
    (q's dtype) and whose states are z [N, NT, K] and zT [N, K] (fp32; initial z0 with h0); else
    den = z = zT = None."""
    N, T, K = q.shape
    V = v.shape[-1]
    NT = triton.cdiv(T, BT)
    BK, BV = _blocks(K, V)
    dev = q.device
    # the chunks' states are stored in the inputs' dtype: fwd_o and bwd_dqkv cast them to it for their
    # dots anyway (the walks keep theirs in fp32), so bf16 storage halves the traffic and changes nothing
    h = torch.empty(N, NT, K, V, device=dev, dtype=q.dtype)
    hT = torch.empty(N, K, V, device=dev, dtype=torch.float32)
    o = torch.empty(N, T, V, device=dev, dtype=q.dtype)
    den = torch.empty(N, T, device=dev, dtype=q.dtype) if ones else None
    z = torch.empty(N, NT, K, device=dev, dtype=torch.float32) if ones else None
    zT = torch.empty(N, K, device=dev, dtype=torch.float32) if ones else None
    dummy = h
    BVW = _walk_block(V, BV)
    nv, tail1 = _value_blocks(V, BVW, gv)
    BKS = _state_rows(BK, nv * N, dev)
    _fwd_h_kernel[(nv, N, triton.cdiv(K, BKS))](
        k, v, gk if gk is not None else dummy, gv if gv is not None else dummy,
        h0 if h0 is not None else dummy, h, hT, z0 if z0 is not None else hT,
        z if ones else hT, zT if ones else hT, T, K, V, NT,
        HAS_GK=gk is not None, HAS_GV=gv is not None, HAS_H0=h0 is not None,
        BT=BT, BK=BKS, BV=BVW, TAIL1=tail1, ONES=ones, **_walk_opts(BKS, BVW))
    BVO = _o_block(BK, V, BV)
    nvo, tail1o = _value_blocks(V, BVO, gv)
    _fwd_o_kernel[(nvo, NT, N)](
        q, k, v, gk if gk is not None else dummy, gv if gv is not None else dummy, h, o, z if ones else hT,
        den if ones else o, T, K, V, NT, HAS_GK=gk is not None, HAS_GV=gv is not None, BT=BT, BK=BK, BV=BVO, TAIL1=tail1o,
        ONES=ones, num_warps=4 if BK * BVO <= 128 * 64 else 8)
    return o, h, hT, den, z, zT


def gla_bwd(q, k, v, gk, gv, h, o, do, dhT, BT, need_dv=True, z=None, dden=None, dzT=None):
    """Gradients of gla_fwd's inputs (same layouts, each in its input's dtype; dv None when not
    needed) and of the initial state (fp32), and (None unless ``z`` is given) of the initial ones
    column state z0. ``o`` is read only for a value gate. With gla_fwd's ``ones``: pass its z, den's
    gradient dden [N, T] and the final ones-column state's gradient dzT (or None)."""
    N, T, K = q.shape
    V = v.shape[-1]
    NT = h.shape[1]
    BK, BV = _blocks(K, V)
    dev = q.device
    ones = z is not None
    dh = torch.empty_like(h)  # stored like h (see gla_fwd)
    dh0 = torch.empty(N, K, V, device=dev, dtype=torch.float32)
    dz = torch.empty_like(z) if ones else None
    dz0 = torch.empty(N, K, device=dev, dtype=torch.float32) if ones else None
    dummy = dh
    BVW = _walk_block(V, BV)
    BKS = _state_rows(BK, triton.cdiv(V, BVW) * N, dev)
    _bwd_dh_kernel[(triton.cdiv(V, BVW), N, triton.cdiv(K, BKS))](
        q, do, gk if gk is not None else dummy, gv if gv is not None else dummy,
        dhT if dhT is not None else dummy, dh, dh0, dden if ones else dh0, dzT if dzT is not None else dh0,
        dz if ones else dh0, dz0 if ones else dh0, T, K, V, NT,
        HAS_GK=gk is not None, HAS_GV=gv is not None, HAS_DHT=dhT is not None,
        BT=BT, BK=BKS, BV=BVW, ONES=ones, **_walk_opts(BKS, BVW))
    dq, dk = torch.empty_like(q), torch.empty_like(k)
    # a value gate's gradient reads dv: computed whenever there is one
    need_dv = need_dv or gv is not None
    dv = torch.empty_like(v) if need_dv else None
    dgk = torch.empty_like(gk) if gk is not None else None
    dgv = torch.empty_like(gv) if gv is not None else None
    _bwd_dqkv_kernel[(NT, N)](
        q, k, v, gk if gk is not None else dummy, gv if gv is not None else dummy, h, dh, do,
        o if gv is not None else dummy, z if ones else dh0, dz if ones else dh0, dden if ones else dh0,
        dq, dk, dv if need_dv else dummy,
        dgk if gk is not None else dummy, dgv if gv is not None else dummy, T, K, V, NT,
        HAS_GK=gk is not None, HAS_GV=gv is not None, NEED_DV=need_dv,
        BT=BT, BK=BK, ONES=ones, **_dqkv_opts(BK, V, BV))
    return dq, dk, dv, dgk, dgv, dh0, dz0


class ChunkGLAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, gk, gv, h0, BT, ones=False):
        B, H, T, K = q.shape
        V = v.shape[-1]
        VS = V + int(ones)  # o's and the state's columns
        qf, kf, vf, gkf, gvf = (_flat(x) for x in (q, k, v, gk, gv))
        h0f = None if h0 is None else h0.reshape(-1, K, VS).float()
        z0f = None if h0f is None or not ones else h0f[..., V].contiguous()
        h0f = None if h0f is None else h0f[..., :V].contiguous()
        o, h, hT, den, z, zT = gla_fwd(qf, kf, vf, gkf, gvf, h0f, BT, ones, z0f)
        ctx.save_for_backward(qf, kf, vf, gkf, gvf, h, o if gv is not None else None, z)
        ctx.BT, ctx.BH, ctx.ones = BT, (B, H), ones
        ctx.h0dt = None if h0 is None else h0.dtype
        S = torch.cat([hT, zT[..., None]], -1) if ones else hT
        return o.view(B, H, T, V), (den.view(B, H, T) if ones else None), S.view(B, H, K, VS)

    @staticmethod
    def backward(ctx, do, dden, dS):
        qf, kf, vf, gkf, gvf, h, o, z = ctx.saved_tensors
        N, T, K = qf.shape
        V = vf.shape[-1]
        VS = V + int(ctx.ones)
        dof = torch.zeros_like(vf, dtype=qf.dtype) if do is None else do.reshape(N, T, V).to(qf.dtype).contiguous()
        if ctx.ones:
            dden = torch.zeros(N, T, device=qf.device, dtype=torch.float32) if dden is None else \
                dden.reshape(N, T).contiguous()
        dhT = dzT = None
        if dS is not None:
            dhT = dS.reshape(N, K, VS).float()
            dzT = dhT[..., V].contiguous() if ctx.ones else None
            dhT = dhT[..., :V].contiguous()
        dq, dk, dv, dgk, dgv, dh0, dz0 = gla_bwd(qf, kf, vf, gkf, gvf, h, o, dof, dhT, ctx.BT,
                                                 need_dv=ctx.needs_input_grad[2], z=z, dden=dden, dzT=dzT)
        if ctx.ones:
            dh0 = torch.cat([dh0, dz0[..., None]], -1)

        def out(x):
            return None if x is None else x.view(*ctx.BH, *x.shape[-2:])
        return (out(dq), out(dk), out(dv) if ctx.needs_input_grad[2] else None, out(dgk), out(dgv),
                out(dh0).to(ctx.h0dt) if ctx.h0dt is not None else None, None, None)


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


def gla_chunked_stored(q, k, v, gk=None, gv=None, initial_state=None, BT: int = 64, normalizer: bool = False):
    """The four kernels above (every chunk's state stored), whatever the shapes; BT in [16, 64].
    Returns (o, final state) as gla_chunked; with ``normalizer`` (no value gate) v gets an implicit
    ones column, as in fused_chunk.gla_fused_chunk, and the result is (o [B, H, T, V], den [B, H, T]
    = that column's output, final state [B, H, K, V + 1]); the initial state has V + 1 columns too.
    The column is never read nor stored as part of v, o or the chunks' [K, V] states, so these keep
    V (a multiple of 64 for the hybrids' heads) aligned columns."""
    if normalizer and gv is not None:
        raise ValueError("gla_chunked_stored: the normaliser column takes no value gate")
    o, den, S = ChunkGLAFunction.apply(q, k, v, gk, gv, initial_state, BT, normalizer)
    return (o, den, S) if normalizer else (o, S)


# ------------------------------------------------------------------ the modules' chunked forms

def hybrid_chunked_triton(q, k, v, fq, fk, g, mix, window, scale, valid=None, meta_k=None, meta_v=None,
                          linear_enabled=True, chunk_size=64, return_state=False):
    """Same contract as linearize.attention.hybrid.hybrid_chunked: the linear half runs in the Triton
    GLA kernels, the window half in the Triton window kernels (kernels/window.py)."""
    from linearize.attention import hybrid as ref

    from .lagged_keys import lagged_keys_train, lagged_keys_triton
    from .window import window_chunked_triton

    num_sm, den_sm = window_chunked_triton(q, k, v, scale, window, valid, meta_k, meta_v, chunk_size)
    V = v.shape[-1]
    num_lin = den_lin = S = None
    if linear_enabled or return_state:
        BT = chunk_size_for(chunk_size)
        # the lagged keys come from their Triton kernels: forward only without autograd (prefill,
        # scoring), forward and backward in training
        lagged = lagged_keys_triton if no_autograd(fk, v, g) else lagged_keys_train
        if GLA_KERNELS == "fused" and BT is not None and fused_chunk.supports(fq, v):
            # the walk adds the normaliser's ones column itself: values stay one 64-wide block
            kk, vv = lagged(fk, v, g, window, ones=False)
            o_lin, S = fused_chunk.gla_fused_chunk(fq, kk, vv, g, None, BT, normalizer=True)
            num_lin, den_lin = o_lin[..., :V], o_lin[..., V]
        elif BT is not None and fq.shape[-1] <= MAX_KEY_GROUP and IMPLICIT_ONES:
            # so do the stored-state kernels, with the column's output apart: v, o and the chunks'
            # states keep V (64) aligned columns, not V + 1
            kk, vv = lagged(fk, v, g, window, ones=False)
            num_lin, den_lin, S = gla_chunked_stored(fq, kk, vv, g, None, None, BT, normalizer=True)
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
