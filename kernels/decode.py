"""Triton decode kernels: one step of one layer for the hybrids (Hedgehog / Lizard) and GSA.

The hybrid step ("sliced", the default) runs two launches. The first has NF + 1 programs per
(batch, head): program j = 0 computes the window half (key / value ring + meta tokens); program
j = i + 1 owns rows i*SLICED_F .. of the head's fp32 state [F, V + 1] (value columns plus the
normaliser column), loads them as one tile together with everything else it reads, so that all its
reads are in flight at once, decays them, adds the evicted key, stores them and writes its partial
numerator and normaliser. The second launch, one program per head, combines the partials under the shared
normaliser, writes the output and puts this step's key and value into the ring, after every program
of the first launch has read the old slot. Each row slice writes its own rows of the feature-key and
gate rings (no other program reads them). The "tile" variant is one program per head walking the
value blocks in turn.

The step counter lives in a device tensor (state["pos"], int32 [B, H]: one per head, so each head's
combine program advances its own after its last read, and the step needs no third launch) so a CUDA
graph can replay the step; the Python int state["n"] is kept in step for the reference code and the
cache.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .chunk import pow2_block


@triton.jit
def _evicted_key(fkr_ptr, g_ptr, gr_ptr, bh, slot, evict, of, mf, ow, mw, is_slot, W, F, HAS_G: tl.constexpr):
    """For the state's rows ``of``: ek, the feature key leaving the ring at ``slot`` (0 before the ring
    is full), decayed by the gates it saw in the window (this step's included); g, this step's gate;
    decay = exp(g). Without gates: g 0, decay 1."""
    ek = tl.load(fkr_ptr + (bh * W + slot) * F + of, mask=mf, other=0.).to(tl.float32)
    ek = tl.where(evict, ek, 0.)
    g = tl.zeros_like(ek)
    decay = tl.zeros_like(ek) + 1.
    if HAS_G:
        g = tl.load(g_ptr + bh * F + of, mask=mf, other=0.).to(tl.float32)
        gt = tl.load(gr_ptr + (bh * W + ow[:, None]) * F + of[None, :], mask=mw[:, None] & mf[None, :], other=0.)
        gt = tl.where(is_slot[:, None], g[None, :], gt)
        ek = ek * tl.exp(tl.sum(gt, 0))
        decay = tl.exp(g)
    return ek, g, decay


@triton.jit
def _update_den_column(Sbase, of, mf, V, ek, decay, HAS_G: tl.constexpr):
    """The state's normaliser column (index V) for rows ``of``: decay, add the evicted key, store;
    returns it. Sbase: this head's state [F, V + 1]."""
    sden = tl.load(Sbase + of * (V + 1) + V, mask=mf, other=0.)
    if HAS_G:
        sden = sden * decay
    sden = sden + ek
    tl.store(Sbase + of * (V + 1) + V, sden, mask=mf)
    return sden


@triton.jit
def _mixed_inverse(mix_ptr, h, den_sm, den_lin, LINEAR: tl.constexpr):
    """(gamma, 1 / den) of the shared normaliser den = gamma den_sm + (1 - gamma) den_lin, gamma =
    sigmoid(mix_h) (den_sm alone when the linear half is off); 1 / den is 0 where den <= 0."""
    gamma = tl.sigmoid(tl.load(mix_ptr + h).to(tl.float32))
    if LINEAR:
        den = gamma * den_sm + (1 - gamma) * den_lin
    else:
        den = den_sm
    ok = den > 0
    return gamma, tl.where(ok, 1. / tl.where(ok, den, 1.), 0.)


@triton.jit
def _window_probs(q, k, kr_ptr, validr_ptr, mk_ptr, bh, b, h, slot, cur_valid, scale, W, M, D,
                  HAS_META: tl.constexpr, BD: tl.constexpr, BW: tl.constexpr, BM: tl.constexpr):
    """The softmax half's unnormalised weights for one head: ``p [BW]`` over the key ring with this
    step's key ``k`` in its slot, ``pm [BM]`` over the meta tokens (zeros without them), and their sum
    ``den_sm``; all shifted by the shared max. q: [BD] fp32."""
    od = tl.arange(0, BD)
    ow = tl.arange(0, BW)
    md = od < D
    mw = ow < W
    is_slot = ow == slot
    kt = tl.load(kr_ptr + (bh * W + ow[:, None]) * D + od[None, :], mask=mw[:, None] & md[None, :], other=0.)
    kt = tl.where(is_slot[:, None], k[None, :], kt).to(tl.float32)
    s = tl.sum(kt * q[None, :], 1) * scale
    vr = tl.load(validr_ptr + b * W + ow, mask=mw, other=0).to(tl.int1)
    vr = tl.where(is_slot, cur_valid, vr) & mw
    s = tl.where(vr, s, float("-inf"))
    m = tl.max(s, 0)
    om = tl.arange(0, BM)
    mm = om < M
    if HAS_META:
        mkt = tl.load(mk_ptr + (h * M + om[:, None]) * D + od[None, :], mask=mm[:, None] & md[None, :], other=0.).to(tl.float32)
        sm = tl.sum(mkt * q[None, :], 1) * scale
        sm = tl.where(mm, sm, float("-inf"))
        m = tl.maximum(m, tl.max(sm, 0))
    m = tl.where(m == float("-inf"), 0., m)
    p = tl.exp(s - m)
    den_sm = tl.sum(p, 0)
    pm = tl.zeros([BM], dtype=tl.float32)
    if HAS_META:
        pm = tl.exp(sm - m)
        den_sm += tl.sum(pm, 0)
    return p, pm, den_sm


@triton.jit
def _hybrid_step_kernel_tile(
    q_ptr, k_ptr, v_ptr, fq_ptr, fk_ptr, g_ptr, valid_ptr, mix_ptr, mk_ptr, mv_ptr,
    kr_ptr, vr_ptr, fkr_ptr, validr_ptr, S_ptr, gr_ptr, pos_ptr, o_ptr,
    scale, H, W, M, D, V, F,
    HAS_G: tl.constexpr, HAS_META: tl.constexpr, HAS_VALID: tl.constexpr, LINEAR: tl.constexpr,
    BD: tl.constexpr, BV: tl.constexpr, BF: tl.constexpr, BW: tl.constexpr, BM: tl.constexpr,
):
    bh = tl.program_id(0).to(tl.int64)
    b = bh // H
    h = bh % H
    n = tl.load(pos_ptr + bh)
    slot = n % W
    evict = n >= W

    od = tl.arange(0, BD)
    of = tl.arange(0, BF)
    ow = tl.arange(0, BW)
    md = od < D
    mf = of < F
    mw = ow < W
    is_slot = ow == slot

    # ---- inputs of this step
    q = tl.load(q_ptr + bh * D + od, mask=md, other=0.).to(tl.float32)
    k = tl.load(k_ptr + bh * D + od, mask=md, other=0.)
    fq = tl.load(fq_ptr + bh * F + of, mask=mf, other=0.).to(tl.float32)
    fk = tl.load(fk_ptr + bh * F + of, mask=mf, other=0.)
    if HAS_VALID:
        cur_valid = tl.load(valid_ptr + b).to(tl.int1)
    else:
        cur_valid = n >= 0  # True

    # ---- the evicted key (slot's old fk) and the gates
    ek, g, decay = _evicted_key(fkr_ptr, g_ptr, gr_ptr, bh, slot, evict, of, mf, ow, mw, is_slot, W, F, HAS_G)
    # ---- window scores over the ring, with this step's key in its slot
    p, pm, den_sm = _window_probs(q, k, kr_ptr, validr_ptr, mk_ptr, bh, b, h, slot, cur_valid, scale, W, M, D,
                                  HAS_META, BD, BW, BM)
    om = tl.arange(0, BM)
    mm = om < M

    # ---- normaliser column of S (index V): update, read
    SV1 = V + 1
    Sbase = S_ptr + bh * F * SV1
    sden = _update_den_column(Sbase, of, mf, V, ek, decay, HAS_G)
    den_lin = tl.sum(fq * sden, 0)
    gamma, inv = _mixed_inverse(mix_ptr, h, den_sm, den_lin, LINEAR)

    # ---- value blocks: ring values, meta values, linear state
    for v0 in range(0, V, BV):
        ov = v0 + tl.arange(0, BV)
        mv = ov < V
        vnew = tl.load(v_ptr + bh * V + ov, mask=mv, other=0.)
        vt = tl.load(vr_ptr + (bh * W + ow[:, None]) * V + ov[None, :], mask=mw[:, None] & mv[None, :], other=0.)
        ev = tl.sum(tl.where(is_slot[:, None], vt.to(tl.float32), 0.), 0)
        vt = tl.where(is_slot[:, None], vnew[None, :], vt).to(tl.float32)
        num = tl.sum(p[:, None] * vt, 0)
        if HAS_META:
            mvt = tl.load(mv_ptr + (h * M + om[:, None]) * V + ov[None, :], mask=mm[:, None] & mv[None, :], other=0.).to(tl.float32)
            num += tl.sum(pm[:, None] * mvt, 0)
        St = tl.load(Sbase + of[:, None] * SV1 + ov[None, :], mask=mf[:, None] & mv[None, :], other=0.)
        if HAS_G:
            St = St * decay[:, None]
        St = St + ek[:, None] * ev[None, :]
        tl.store(Sbase + of[:, None] * SV1 + ov[None, :], St, mask=mf[:, None] & mv[None, :])
        if LINEAR:
            lin = tl.sum(fq[:, None] * St, 0)
            num = gamma * num + (1 - gamma) * lin
        tl.store(o_ptr + bh * V + ov, (num * inv).to(o_ptr.dtype.element_ty), mask=mv)

    # ---- every read of the old slot is done: write this step into the ring
    tl.debug_barrier()
    tl.store(kr_ptr + (bh * W + slot) * D + od, k, mask=md)
    tl.store(fkr_ptr + (bh * W + slot) * F + of, fk, mask=mf)
    if HAS_G:
        tl.store(gr_ptr + (bh * W + slot) * F + of, g, mask=mf)
    for v0 in range(0, V, BV):
        ov = v0 + tl.arange(0, BV)
        mv = ov < V
        tl.store(vr_ptr + (bh * W + slot) * V + ov, tl.load(v_ptr + bh * V + ov, mask=mv, other=0.), mask=mv)
    if h == 0:
        tl.store(validr_ptr + b * W + slot, cur_valid.to(validr_ptr.dtype.element_ty))


def _pos(state, B, H, device):
    """The device step counter, created from state["n"] the first time a kernel sees the state."""
    from linearize.attention.hybrid import step_counter

    pos = state.get("pos")
    if pos is None or tuple(pos.shape) != (B, H):
        pos = step_counter(state["n"], B, H, device)
        state["pos"] = pos
    return pos


def advance(state, inc_pos: bool = True):
    state["n"] += 1
    if inc_pos:
        state["pos"].add_(1)


@triton.jit
def _hybrid_step_kernel_sliced(
    q_ptr, k_ptr, v_ptr, fq_ptr, fk_ptr, g_ptr, valid_ptr, mk_ptr, mv_ptr,
    kr_ptr, vr_ptr, fkr_ptr, validr_ptr, S_ptr, gr_ptr, pos_ptr, part_ptr,
    scale, H, W, M, D, V, F, NF,
    HAS_G: tl.constexpr, HAS_META: tl.constexpr, HAS_VALID: tl.constexpr,
    BD: tl.constexpr, BV: tl.constexpr, BFS: tl.constexpr, BW: tl.constexpr, BM: tl.constexpr,
):
    """Program (j, head). j == 0: the window half (key / value ring + meta tokens) into part[bh, NF].
    j = i + 1 > 0: the linear state's rows i*BFS .. i*BFS+BFS-1, as [BFS, BV] tiles (one tile when
    V <= BV, the usual case: every read of the program is then issued before any arithmetic and is in
    flight at once); decay, add the evicted key, store; partial numerator fq . S and normaliser
    fq . S[:, V] into part[bh, i]. _hybrid_step_combine_sliced then finishes each head.
    The window programs come first in the grid because they are the longest (two dependent rounds
    of reads: the key ring, then the value ring); launched last they were the kernel's tail."""
    j = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    n = tl.load(pos_ptr + bh)
    slot = n % W
    evict = n >= W
    SV1 = V + 1
    i = tl.where(j == 0, NF, j - 1)
    pbase = part_ptr + (bh * (NF + 1) + i) * SV1
    ow = tl.arange(0, BW)
    mw = ow < W
    is_slot = ow == slot
    if j > 0:
        of = i * BFS + tl.arange(0, BFS)
        mf = of < F
        Sbase = S_ptr + bh * F * SV1
        ov = tl.arange(0, BV)
        mv = ov < V
        St = tl.load(Sbase + of[:, None] * SV1 + ov[None, :], mask=mf[:, None] & mv[None, :], other=0.)
        ev = tl.load(vr_ptr + (bh * W + slot) * V + ov, mask=mv, other=0.).to(tl.float32)
        fq = tl.load(fq_ptr + bh * F + of, mask=mf, other=0.).to(tl.float32)
        fk = tl.load(fk_ptr + bh * F + of, mask=mf, other=0.)
        ek, g, decay = _evicted_key(fkr_ptr, g_ptr, gr_ptr, bh, slot, evict, of, mf, ow, mw, is_slot, W, F, HAS_G)
        sden = _update_den_column(Sbase, of, mf, V, ek, decay, HAS_G)
        tl.store(pbase + V, tl.sum(fq * sden, 0))
        for v0 in range(0, V, BV):
            if v0 > 0:  # wide values only: the next block
                ov = v0 + tl.arange(0, BV)
                mv = ov < V
                St = tl.load(Sbase + of[:, None] * SV1 + ov[None, :], mask=mf[:, None] & mv[None, :], other=0.)
                ev = tl.load(vr_ptr + (bh * W + slot) * V + ov, mask=mv, other=0.).to(tl.float32)
            ev = tl.where(evict, ev, 0.)  # ek is 0 before the ring is full; keep 0 * garbage out
            if HAS_G:
                St = St * decay[:, None]
            St = St + ek[:, None] * ev[None, :]
            tl.store(Sbase + of[:, None] * SV1 + ov[None, :], St, mask=mf[:, None] & mv[None, :])
            tl.store(pbase + ov, tl.sum(fq[:, None] * St, 0), mask=mv)
        # this slice of the key / gate rings: read above by this program only
        tl.debug_barrier()
        tl.store(fkr_ptr + (bh * W + slot) * F + of, fk, mask=mf)
        if HAS_G:
            tl.store(gr_ptr + (bh * W + slot) * F + of, g, mask=mf)
    else:
        ov = tl.arange(0, BV)
        mv = ov < V
        vt = tl.load(vr_ptr + (bh * W + ow[:, None]) * V + ov[None, :], mask=mw[:, None] & mv[None, :], other=0.)
        od = tl.arange(0, BD)
        md = od < D
        q = tl.load(q_ptr + bh * D + od, mask=md, other=0.).to(tl.float32)
        k = tl.load(k_ptr + bh * D + od, mask=md, other=0.)
        if HAS_VALID:
            cur_valid = tl.load(valid_ptr + b).to(tl.int1)
        else:
            cur_valid = n >= 0
        p, pm, den_sm = _window_probs(q, k, kr_ptr, validr_ptr, mk_ptr, bh, b, h, slot, cur_valid, scale, W, M, D,
                                      HAS_META, BD, BW, BM)
        tl.store(pbase + V, den_sm)
        om = tl.arange(0, BM)
        mm = om < M
        for v0 in range(0, V, BV):
            if v0 > 0:
                ov = v0 + tl.arange(0, BV)
                mv = ov < V
                vt = tl.load(vr_ptr + (bh * W + ow[:, None]) * V + ov[None, :], mask=mw[:, None] & mv[None, :], other=0.)
            vnew = tl.load(v_ptr + bh * V + ov, mask=mv, other=0.)
            vw = tl.where(is_slot[:, None], vnew[None, :], vt).to(tl.float32)
            num = tl.sum(p[:, None] * vw, 0)
            if HAS_META:
                mvt = tl.load(mv_ptr + (h * M + om[:, None]) * V + ov[None, :], mask=mm[:, None] & mv[None, :], other=0.).to(tl.float32)
                num += tl.sum(pm[:, None] * mvt, 0)
            tl.store(pbase + ov, num, mask=mv)


@triton.jit
def _hybrid_step_combine_sliced(
    k_ptr, v_ptr, valid_ptr, mix_ptr, kr_ptr, vr_ptr, validr_ptr, pos_ptr, part_ptr, o_ptr,
    H, W, D, V, NF,
    HAS_VALID: tl.constexpr, LINEAR: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr, BNF: tl.constexpr,
):
    """Per head, after _hybrid_step_kernel_sliced: the output from the head's partial sums
    part[bh] [NF + 1, V + 1] (rows 0 .. NF-1: the linear state's slices, numerator then normaliser;
    row NF: the window half), then this step's key and value into the ring (every reader of the old
    slot was in the first launch), then the head's step counter."""
    bh = tl.program_id(0).to(tl.int64)
    b = bh // H
    h = bh % H
    n = tl.load(pos_ptr + bh)
    slot = n % W
    SV1 = V + 1
    pbase = part_ptr + bh * (NF + 1) * SV1
    onf = tl.arange(0, BNF)
    mnf = onf < NF
    den_lin = tl.sum(tl.load(pbase + onf * SV1 + V, mask=mnf, other=0.), 0)
    den_sm = tl.load(pbase + NF * SV1 + V)
    gamma, inv = _mixed_inverse(mix_ptr, h, den_sm, den_lin, LINEAR)
    for v0 in range(0, V, BV):
        ov = v0 + tl.arange(0, BV)
        mv = ov < V
        num = tl.load(pbase + NF * SV1 + ov, mask=mv, other=0.)
        if LINEAR:
            lin = tl.sum(tl.load(pbase + onf[:, None] * SV1 + ov[None, :], mask=mnf[:, None] & mv[None, :], other=0.), 0)
            num = gamma * num + (1 - gamma) * lin
        tl.store(o_ptr + bh * V + ov, (num * inv).to(o_ptr.dtype.element_ty), mask=mv)
        tl.store(vr_ptr + (bh * W + slot) * V + ov, tl.load(v_ptr + bh * V + ov, mask=mv, other=0.), mask=mv)
    od = tl.arange(0, BD)
    md = od < D
    tl.store(kr_ptr + (bh * W + slot) * D + od, tl.load(k_ptr + bh * D + od, mask=md, other=0.), mask=md)
    if h == 0:
        if HAS_VALID:
            cur_valid = tl.load(valid_ptr + b).to(tl.int1)
        else:
            cur_valid = n >= 0
        tl.store(validr_ptr + b * W + slot, cur_valid.to(validr_ptr.dtype.element_ty))
    tl.store(pos_ptr + bh, n + 1)  # this head's counter: no other program of this launch reads it


# Variants of the hybrid step: "sliced" (the default) spreads each head's state rows over programs,
# beside one program for the window half, then combines per head in a second kernel; "tile" is one
# program per head walking V in blocks. LINEARIZE_DECODE_VARIANT overrides the default.
# Measured on the H100 from CUDA-graph replays (benchmarks/2026-11-25-h100-session12): sliced is the
# faster at batch 1, 16 and 64, Llama-3-8B and SmolLM2 head shapes, Lizard and Hedgehog.
DECODE_VARIANT = os.environ.get("LINEARIZE_DECODE_VARIANT", "")
# sliced: SLICED_F state rows a program as one [SLICED_F, V] tile (values wider than SLICED_MAX_V in
# blocks of it); 32 rows on 2 warps measured best of 16 / 32 / 64 x 1 / 2 / 4 (sweep_decode.py)
SLICED_F = int(os.environ.get("LINEARIZE_DECODE_SLICED_F", "32"))
SLICED_WARPS = int(os.environ.get("LINEARIZE_DECODE_SLICED_WARPS", "2"))
SLICED_MAX_V = 256
VARIANTS = ("sliced", "tile")


def hybrid_step_triton(state, q, k, v, fq, fk, g, mix, scale, valid=None, meta_k=None, meta_v=None,
                       linear_enabled=True, variant=None):
    """Same contract as linearize.attention.hybrid.hybrid_step (state updated in place)."""
    B, H, D = q.shape
    V = v.shape[-1]
    F = fk.shape[-1]
    W = state["k"].shape[2]
    has_meta = meta_k is not None and meta_k.shape[-2] > 0
    M = meta_k.shape[-2] if has_meta else 0
    pos = _pos(state, B, H, q.device)
    o = torch.empty(B, H, V, device=q.device, dtype=q.dtype)
    c = lambda x: x.contiguous()  # noqa: E731
    dummy = state["S"]  # stands in for absent optional inputs (the kernels' flags skip them)
    step_in = dict(q=c(q), k=c(k), v=c(v), fq=c(fq), fk=c(fk), g=c(g) if g is not None else dummy,
                   valid=c(valid) if valid is not None else dummy, mix=c(mix),
                   mk=c(meta_k) if has_meta else dummy, mv=c(meta_v) if has_meta else dummy)
    rings = (state["k"], state["v"], state["fk"], state["valid"], state["S"],
             state["g"] if g is not None else dummy, pos)
    sizes = (float(scale), H, W, M, D, V, F)
    args = (*step_in.values(), *rings, o, *sizes)
    flags = dict(HAS_G=g is not None, HAS_META=has_meta, HAS_VALID=valid is not None, LINEAR=bool(linear_enabled),
                 BD=pow2_block(D), BF=pow2_block(F), BW=pow2_block(W), BM=pow2_block(max(M, 1)))
    variant = variant or DECODE_VARIANT or "sliced"
    if variant not in VARIANTS:
        raise ValueError(f"unknown decode variant {variant!r}; expected one of {VARIANTS}")
    if variant == "sliced":
        BFS = min(SLICED_F, pow2_block(F, lo=1))
        NF = triton.cdiv(F, BFS)
        BNF = pow2_block(NF, lo=1)
        part = torch.empty(B * H, NF + 1, V + 1, device=q.device, dtype=torch.float32)
        sliced_in = [t for name, t in step_in.items() if name != "mix"]  # the mixing factor is the combine's
        _hybrid_step_kernel_sliced[(NF + 1, B * H)](*sliced_in, *rings, part, *sizes, NF,
                                                     HAS_G=g is not None, HAS_META=has_meta, HAS_VALID=valid is not None,
                                                     BD=flags["BD"], BV=min(pow2_block(V), SLICED_MAX_V), BFS=BFS,
                                                     BW=flags["BW"], BM=flags["BM"], num_warps=SLICED_WARPS)
        _hybrid_step_combine_sliced[(B * H,)](step_in["k"], step_in["v"], step_in["valid"], step_in["mix"],
                                              state["k"], state["v"], state["valid"], pos, part, o,
                                              H, W, D, V, NF, HAS_VALID=valid is not None,
                                              LINEAR=bool(linear_enabled), BD=flags["BD"],
                                              BV=min(64, pow2_block(V)), BNF=BNF, num_warps=1)
    else:
        _hybrid_step_kernel_tile[(B * H,)](*args, **flags, BV=64 if V > 32 else pow2_block(V),
                                           num_warps=8 if W * D >= 4096 else 4)
    advance(state, inc_pos=variant != "sliced")  # the sliced combine advanced the counters itself
    return o


@triton.jit
def _gsa_step_kernel(
    q_ptr, k_ptr, v_ptr, g_ptr, Sk_ptr, Sv_ptr, o_ptr,
    scale, D, V, MS,
    BD: tl.constexpr, BV: tl.constexpr, BMS: tl.constexpr,
):
    bh = tl.program_id(0).to(tl.int64)
    od = tl.arange(0, BD)
    om = tl.arange(0, BMS)
    md = od < D
    mm = om < MS
    q = tl.load(q_ptr + bh * D + od, mask=md, other=0.).to(tl.float32) * scale
    k = tl.load(k_ptr + bh * D + od, mask=md, other=0.).to(tl.float32)
    g = tl.load(g_ptr + bh * MS + om, mask=mm, other=0.).to(tl.float32)
    a = tl.exp(g)
    wr = 1 - a
    # pass 1: Sk [D, m] decays on the slot dim, writes k (x) (1 - alpha)
    Skp = Sk_ptr + bh * D * MS + od[:, None] * MS + om[None, :]
    msk = md[:, None] & mm[None, :]
    Sk = tl.load(Skp, mask=msk, other=0.)
    Sk = Sk * a[None, :] + k[:, None] * wr[None, :]
    tl.store(Skp, Sk, mask=msk)
    s = tl.sum(q[:, None] * Sk, 0)
    s = tl.where(mm, s, float("-inf"))
    s = s - tl.max(s, 0)
    e = tl.exp(s)
    p = e / tl.sum(e, 0)
    # pass 2: Sv [m, V] decays on the slot dim, writes (1 - alpha) (x) v; reads with p
    for v0 in range(0, V, BV):
        ov = v0 + tl.arange(0, BV)
        mv = ov < V
        vv = tl.load(v_ptr + bh * V + ov, mask=mv, other=0.).to(tl.float32)
        Svp = Sv_ptr + bh * MS * V + om[:, None] * V + ov[None, :]
        mk2 = mm[:, None] & mv[None, :]
        Sv = tl.load(Svp, mask=mk2, other=0.)
        Sv = Sv * a[:, None] + wr[:, None] * vv[None, :]
        tl.store(Svp, Sv, mask=mk2)
        o = tl.sum(p[:, None] * Sv, 0)
        tl.store(o_ptr + bh * V + ov, o.to(o_ptr.dtype.element_ty), mask=mv)


def gsa_step_triton(state, q, k, v, g, scale):
    """Same contract as linearize.attention.gated_slots.gsa_step (state updated in place)."""
    B, H, D = q.shape
    V = v.shape[-1]
    MS = g.shape[-1]
    Sk, Sv = state["Sk"], state["Sv"]
    o = torch.empty(B, H, V, device=q.device, dtype=Sv.dtype)
    _gsa_step_kernel[(B * H,)](
        q.contiguous(), k.contiguous(), v.contiguous(), g.contiguous(), Sk, Sv, o,
        float(scale), D, V, MS,
        BD=pow2_block(D), BV=64 if V > 32 else pow2_block(V), BMS=pow2_block(MS), num_warps=4,
    )
    if "pos" in state:
        advance(state)
    else:
        state["n"] += 1
    return o
