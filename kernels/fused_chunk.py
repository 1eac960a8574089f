"""Fused chunked gated linear attention: each program carries the state through the chunks in
registers, so no per-chunk state is ever written to memory.

Same math as chunk.py and linearize.attention.gla.gla_chunked, for a key gate (or none). Inside a
chunk of BT steps, with G the chunk-local cumsum of the log-decay g and Gl = sum of the chunk's g:

    q_in = q e^G,  k_in = k e^-G,  k_out = k e^(Gl - G)
    o_n      = q_in h_n + tril(q_in k_in^T) v                  h_n: [K, V] state at the chunk start
    h_{n+1}  = e^Gl h_n + k_out^T v

chunk.py stores h_n for every chunk and head (fp32 [K, V]: at K = 128 more bytes than q, k and v of
the chunk together) and reads it back in the backward. Here three kernels walk the chunks instead,
one program per (key block of BK rows, batch x head), the whole value width in one block:

    fwd      walk forward:  o (a partial sum over the key block; atomically added when K > BK)
    bwd_dq   walk forward again for h_n:  dq = (do h_n^T + tril(do v^T) k_in) e^G
    bwd_dkv  walk backward with D = dL/dh_{n+1}:
                 dk = (tril(do v^T)^T q_in) e^-G + (v D^T) e^(Gl - G)
                 dv = tril(q_in k_in^T)^T do + k_out D        (atomically added when K > BK)
                 dg = reverse cumsum over time of (q dq - k dk)
             and D <- e^Gl D + q_in^T do; the last D is dL/dh_0.

The hybrids' normaliser (``normalizer=True``): as if v had a ones column appended, without reading
or storing it: a key-sum state z [K] beside h, o's last column q_in z + rowsum(tril(q_in k_in^T)),
and its gradient terms (dA += dden, dq += dden z, dk_out += Dz).

Inputs are [B, H, T, C], made contiguous; T need not be a multiple of BT (rows past T load as zeros:
no write, no decay). Only V <= MAX_V (one value block) and no value gate; ``supports`` says where
gla_chunked_triton and the hybrid use it (where it measured faster), chunk.py's kernels do the rest.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_V = 128  # one value block per program: dq and dk then need no sum over value blocks
# Where gla_chunked_triton and the hybrid take the walk: one key block and one value block of at most
# 64 (no atomics). On the H100 (session 8) it beat the stored-state kernels 2x there (B16 H9 T1024
# K64 V64: fwd+bwd 0.93 vs 1.85 ms) and lost elsewhere: with a 128-wide value block (K128 V65: 4.4 vs
# 1.8 ms; B1 H32 T16K K128 V128: 12.1 vs 8.4 ms; the [64, 128] fp32 state and its tiles no longer fit
# in registers) and with two key blocks adding atomically (the SmolLM2 hybrid layer, F = 128, with the
# normaliser column in the kernel: fwd+bwd 4.28 vs 3.62 ms, benchmarks/bench_hybrid_layer.py).
FASTER_K = 64
FASTER_V = 64
BK_MAX = 64  # key rows per program: a [64, 128] fp32 state is 32 KB of registers


@triton.jit
def _load(ptr, t, cols, T, C, S):
    """[BT, BC] tile of rows t < T, columns cols < C of one head's [T, S] row-major slab (zeros outside)."""
    return tl.load(ptr + t[:, None] * S + cols[None, :], mask=(t[:, None] < T) & (cols[None, :] < C), other=0.)


@triton.jit
def _col(ptr, t, c, T, S):
    """Column c of rows t < T of a [T, S] slab, as fp32 [BT] (zeros outside)."""
    return tl.load(ptr + t * S + c, mask=t < T, other=0.).to(tl.float32)


@triton.jit
def _chunk_gate(gb, t, cols, T, C):
    """A chunk's raw log-decays [BT, BC] (rows past T read as 0: no decay) summed in registers:
    (G = inclusive cumsum over the chunk's rows, Gl = the chunk's total [BC]), fp32."""
    gc = _load(gb, t, cols, T, C, C).to(tl.float32)
    return tl.cumsum(gc, axis=0), tl.sum(gc, axis=0)


@triton.jit
def _gated(qc, kc, gb, t, ok_, T, K, HAS_G: tl.constexpr):
    """(q_in, k_in, k_out, G, Gl) of a chunk: the chunk-local decays applied (dot dtype of qc)."""
    dt = qc.dtype
    if HAS_G:
        G, Gl = _chunk_gate(gb, t, ok_, T, K)
        q_in = (qc * tl.exp(G)).to(dt)
        k_in = (kc * tl.exp(-G)).to(dt)
        k_out = (kc * tl.exp(Gl[None, :] - G)).to(dt)
    else:
        G = tl.zeros(qc.shape, dtype=tl.float32)
        Gl = tl.zeros([qc.shape[1]], dtype=tl.float32)
        q_in, k_in, k_out = qc, kc, kc
    return q_in, k_in, k_out, G, Gl


@triton.jit
def _load_state(ptr, sb, ov, V, mk, mv, NORM: tl.constexpr, HAS: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """(this program's rows of a [K, V (+1)] fp32 state, its normaliser column [BK]); zeros if not HAS."""
    h = tl.zeros([BK, BV], dtype=tl.float32)
    z = tl.zeros([BK], dtype=tl.float32)
    if HAS:
        h = tl.load(ptr + sb[:, None] + ov[None, :], mask=mk[:, None] & mv[None, :], other=0.).to(tl.float32)
        if NORM:
            z = tl.load(ptr + sb + V, mask=mk, other=0.).to(tl.float32)
    return h, z


@triton.jit
def _store_state(ptr, sb, ov, V, mk, mv, h, z, NORM: tl.constexpr):
    tl.store(ptr + sb[:, None] + ov[None, :], h, mask=mk[:, None] & mv[None, :])
    if NORM:
        tl.store(ptr + sb + V, z, mask=mk)


@triton.jit
def _advance(h, z, k_out, vc, Gl, NORM: tl.constexpr):
    """The state past one chunk: h <- e^Gl h + k_out^T v, z <- e^Gl z + colsum(k_out)."""
    if NORM:
        z = z * tl.exp(Gl) + tl.sum(k_out.to(tl.float32), axis=0)
    h = h * tl.exp(Gl)[:, None]
    h += tl.dot(tl.trans(k_out), vc)
    return h, z


@triton.jit
def _grad_scores(dc, vc, dob, t, V, T, VS, causal, NORM: tl.constexpr):
    """(dA = tril(do v^T) [+ dden for the normaliser column], dden [BT] fp32: zeros without NORM)."""
    dA = tl.dot(dc, tl.trans(vc))
    dden = tl.zeros([dc.shape[0]], dtype=tl.float32)
    if NORM:
        dden = _col(dob, t, V, T, VS)
        dA += dden[:, None]
    return tl.where(causal, dA, 0.).to(dc.dtype), dden


@triton.jit
def _fwd_kernel(q_ptr, k_ptr, v_ptr, g_ptr, h0_ptr, o_ptr, hT_ptr,
                T, K, V, NT,
                HAS_G: tl.constexpr, HAS_H0: tl.constexpr, NORM: tl.constexpr, ATOMIC: tl.constexpr,
                BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    ik = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    VS = V + NORM  # o and the states carry the normaliser column (last) when NORM
    ok_ = ik * BK + tl.arange(0, BK)
    ov = tl.arange(0, BV)
    ot = tl.arange(0, BT)
    mk, mv = ok_ < K, ov < V
    qb = q_ptr + bh * T * K
    kb = k_ptr + bh * T * K
    gb = g_ptr + bh * T * K
    vb = v_ptr + bh * T * V
    ob = o_ptr + bh * T * VS
    sb = bh * K * VS + ok_ * VS  # rows of this program in a [K, VS] state
    causal = ot[:, None] >= ot[None, :]
    # z: the normaliser's state, a decayed sum of keys
    h, z = _load_state(h0_ptr, sb, ov, V, mk, mv, NORM, HAS_H0, BK, BV)
    for n in range(NT):
        t = n * BT + ot
        qc = _load(qb, t, ok_, T, K, K)
        dt = qc.dtype
        kc = _load(kb, t, ok_, T, K, K)
        vc = _load(vb, t, ov, T, V, V).to(dt)
        q_in, k_in, k_out, G, Gl = _gated(qc, kc, gb, t, ok_, T, K, HAS_G)
        A = tl.where(causal, tl.dot(q_in, tl.trans(k_in)), 0.)
        o = tl.dot(q_in, h.to(dt)) + tl.dot(A.to(dt), vc)
        optrs = ob + t[:, None] * VS + ov[None, :]
        omask = (t[:, None] < T) & mv[None, :]
        if ATOMIC:
            tl.atomic_add(optrs, o, mask=omask)
        else:
            tl.store(optrs, o.to(o_ptr.dtype.element_ty), mask=omask)
        if NORM:
            den = tl.sum(A, axis=1) + tl.sum(q_in.to(tl.float32) * z[None, :], axis=1)
            if ATOMIC:
                tl.atomic_add(ob + t * VS + V, den, mask=t < T)
            else:
                tl.store(ob + t * VS + V, den.to(o_ptr.dtype.element_ty), mask=t < T)
        h, z = _advance(h, z, k_out, vc, Gl, NORM)
    _store_state(hT_ptr, sb, ov, V, mk, mv, h, z, NORM)


@triton.jit
def _bwd_dq_kernel(k_ptr, v_ptr, g_ptr, h0_ptr, do_ptr, dq_ptr,
                   T, K, V, NT,
                   HAS_G: tl.constexpr, HAS_H0: tl.constexpr, NORM: tl.constexpr,
                   BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    ik = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    VS = V + NORM
    ok_ = ik * BK + tl.arange(0, BK)
    ov = tl.arange(0, BV)
    ot = tl.arange(0, BT)
    mk, mv = ok_ < K, ov < V
    kb = k_ptr + bh * T * K
    gb = g_ptr + bh * T * K
    vb = v_ptr + bh * T * V
    dob = do_ptr + bh * T * VS
    dqb = dq_ptr + bh * T * K
    sb = bh * K * VS + ok_ * VS
    causal = ot[:, None] >= ot[None, :]
    h, z = _load_state(h0_ptr, sb, ov, V, mk, mv, NORM, HAS_H0, BK, BV)
    for n in range(NT):
        t = n * BT + ot
        kc = _load(kb, t, ok_, T, K, K)
        dt = kc.dtype
        vc = _load(vb, t, ov, T, V, V).to(dt)
        dc = _load(dob, t, ov, T, V, VS).to(dt)
        _, k_in, k_out, G, Gl = _gated(kc, kc, gb, t, ok_, T, K, HAS_G)  # dq needs no q
        dA, dden = _grad_scores(dc, vc, dob, t, V, T, VS, causal, NORM)
        dq = tl.dot(dc, tl.trans(h.to(dt))) + tl.dot(dA, k_in)
        if NORM:
            dq += dden[:, None] * z[None, :]
        dq = dq * tl.exp(G)
        tl.store(dqb + t[:, None] * K + ok_[None, :], dq.to(dq_ptr.dtype.element_ty),
                 mask=(t[:, None] < T) & mk[None, :])
        h, z = _advance(h, z, k_out, vc, Gl, NORM)


@triton.jit
def _bwd_dkv_kernel(q_ptr, k_ptr, v_ptr, g_ptr, do_ptr, dq_ptr, dhT_ptr, dk_ptr, dv_ptr, dg_ptr, dh0_ptr,
                    T, K, V, NT,
                    HAS_G: tl.constexpr, HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr, NORM: tl.constexpr,
                    ATOMIC: tl.constexpr, NEED_DV: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                    BV: tl.constexpr):
    ik = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    VS = V + NORM
    ok_ = ik * BK + tl.arange(0, BK)
    ov = tl.arange(0, BV)
    ot = tl.arange(0, BT)
    mk, mv = ok_ < K, ov < V
    qb = q_ptr + bh * T * K
    kb = k_ptr + bh * T * K
    gb = g_ptr + bh * T * K
    dqb = dq_ptr + bh * T * K
    dkb = dk_ptr + bh * T * K
    dgb = dg_ptr + bh * T * K
    vb = v_ptr + bh * T * V
    dob = do_ptr + bh * T * VS
    dvb = dv_ptr + bh * T * V
    sb = bh * K * VS + ok_ * VS
    causal = ot[:, None] >= ot[None, :]
    # D: dL/d(state at the end of the chunk being walked); Dz: the same for the normaliser's state
    D, Dz = _load_state(dhT_ptr, sb, ov, V, mk, mv, NORM, HAS_DHT, BK, BV)
    carry = tl.zeros([BK], dtype=tl.float32)  # sum over later chunks of (q dq - k dk)
    for i in range(NT):
        n = NT - 1 - i
        t = n * BT + ot
        qc = _load(qb, t, ok_, T, K, K)
        dt = qc.dtype
        kc = _load(kb, t, ok_, T, K, K)
        vc = _load(vb, t, ov, T, V, V).to(dt)
        dc = _load(dob, t, ov, T, V, VS).to(dt)
        q_in, k_in, k_out, G, Gl = _gated(qc, kc, gb, t, ok_, T, K, HAS_G)
        A = tl.where(causal, tl.dot(q_in, tl.trans(k_in)), 0.).to(dt)
        dA, dden = _grad_scores(dc, vc, dob, t, V, T, VS, causal, NORM)
        Dd = D.to(dt)
        dk_in = tl.dot(tl.trans(dA), q_in)
        dk_out = tl.dot(vc, tl.trans(Dd))
        if NORM:
            dk_out += Dz[None, :]
        dk = dk_in * tl.exp(-G) + dk_out * tl.exp(Gl[None, :] - G)
        rmask = t[:, None] < T
        tl.store(dkb + t[:, None] * K + ok_[None, :], dk.to(dk_ptr.dtype.element_ty), mask=rmask & mk[None, :])
        if NEED_DV:  # off when v needs no gradient (stage 1: frozen v_proj on detached inputs)
            dv = tl.dot(tl.trans(A), dc) + tl.dot(k_out, Dd)
            dvptrs = dvb + t[:, None] * V + ov[None, :]
            if ATOMIC:
                tl.atomic_add(dvptrs, dv, mask=rmask & mv[None, :])
            else:
                tl.store(dvptrs, dv.to(dv_ptr.dtype.element_ty), mask=rmask & mv[None, :])
        if HAS_G:
            dqc = _load(dqb, t, ok_, T, K, K).to(tl.float32)
            x = qc.to(tl.float32) * dqc - kc.to(tl.float32) * dk
            tot = tl.sum(x, axis=0)
            dg = carry[None, :] + tot[None, :] - tl.cumsum(x, axis=0) + x  # sum over s >= t
            tl.store(dgb + t[:, None] * K + ok_[None, :], dg.to(dg_ptr.dtype.element_ty), mask=rmask & mk[None, :])
            carry += tot
        D = D * tl.exp(Gl)[:, None]
        D += tl.dot(tl.trans(q_in), dc)
        if NORM:
            Dz = Dz * tl.exp(Gl) + tl.sum(q_in.to(tl.float32) * dden[:, None], axis=0)
    if STORE_DH0:
        _store_state(dh0_ptr, sb, ov, V, mk, mv, D, Dz, NORM)


def supports(q, v, gv=None) -> bool:
    """True when gla_chunked_triton (and the hybrid) send this call here: no value gate, keys and
    values at most FASTER_K / FASTER_V wide."""
    return gv is None and q.shape[-1] <= FASTER_K and v.shape[-1] <= FASTER_V


def _blocks(K, V):
    BK = max(16, min(BK_MAX, triton.next_power_of_2(K)))
    BV = max(16, triton.next_power_of_2(V))
    return BK, BV, triton.cdiv(K, BK)


def _warps(BK, BV):
    return 8 if BK * BV >= 64 * 128 else 4


def _cont(x):
    return None if x is None else x.contiguous()


class FusedChunkGLA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, h0, BT, norm=False):
        q, k, v, g = _cont(q), _cont(k), _cont(v), _cont(g)
        B, H, T, K = q.shape
        V = v.shape[-1]
        VS = V + int(norm)
        BK, BV, NK = _blocks(K, V)
        atomic = NK > 1  # key blocks add their partial outputs
        o = torch.zeros(B, H, T, VS, device=q.device, dtype=torch.float32) if atomic else \
            torch.empty(B, H, T, VS, device=q.device, dtype=q.dtype)
        hT = torch.empty(B, H, K, VS, device=q.device, dtype=torch.float32)
        h0c = None if h0 is None else h0.float().contiguous()
        _fwd_kernel[(NK, B * H)](
            q, k, v, q if g is None else g, hT if h0c is None else h0c, o, hT, T, K, V, triton.cdiv(T, BT),
            HAS_G=g is not None, HAS_H0=h0c is not None, NORM=int(norm), ATOMIC=atomic,
            BT=BT, BK=BK, BV=BV, num_warps=_warps(BK, BV))
        ctx.save_for_backward(q, k, v, g, h0c, hT)
        ctx.BT, ctx.norm = BT, norm
        ctx.dtypes = (q.dtype, k.dtype, v.dtype, None if g is None else g.dtype, None if h0 is None else h0.dtype)
        return o.to(q.dtype), hT

    @staticmethod
    def backward(ctx, do, dS):
        q, k, v, g, h0c, hT = ctx.saved_tensors
        qdt, kdt, vdt, gdt, h0dt = ctx.dtypes
        B, H, T, K = q.shape
        V = v.shape[-1]
        BT, norm = ctx.BT, ctx.norm
        BK, BV, NK = _blocks(K, V)
        NT = triton.cdiv(T, BT)
        atomic = NK > 1  # key blocks add their partial dv
        do = torch.zeros(B, H, T, V + int(norm), device=q.device, dtype=v.dtype) if do is None else \
            do.to(v.dtype).contiguous()
        warps = _warps(BK, BV)
        # dq in fp32: the gate's gradient reads it back (q dq - k dk nearly cancel)
        dq = torch.empty_like(q, dtype=torch.float32)
        _bwd_dq_kernel[(NK, B * H)](
            k, v, q if g is None else g, hT if h0c is None else h0c, do, dq, T, K, V, NT,
            HAS_G=g is not None, HAS_H0=h0c is not None, NORM=int(norm), BT=BT, BK=BK, BV=BV, num_warps=warps)
        dk = torch.empty_like(dq)
        dg = torch.empty_like(dq) if g is not None else dq
        need_dv = ctx.needs_input_grad[2]
        dv = (torch.zeros_like(v, dtype=torch.float32) if atomic else torch.empty_like(v)) if need_dv else dq
        dh0 = torch.empty_like(hT) if h0c is not None else hT
        dhT = None if dS is None else dS.float().contiguous()
        _bwd_dkv_kernel[(NK, B * H)](
            q, k, v, q if g is None else g, do, dq, hT if dhT is None else dhT, dk, dv, dg, dh0, T, K, V, NT,
            HAS_G=g is not None, HAS_DHT=dhT is not None, STORE_DH0=h0c is not None, NORM=int(norm),
            ATOMIC=atomic, NEED_DV=need_dv, BT=BT, BK=BK, BV=BV, num_warps=warps)
        dgk = None
        if g is not None:
            if dS is not None:  # the final state's term reaches every step's gate (it sits at t = T-1)
                dg = dg + (dS.float() * hT).sum(-1).unsqueeze(2)
            dgk = dg.to(gdt)
        return (dq.to(qdt), dk.to(kdt), dv.to(vdt) if need_dv else None, dgk,
                dh0.to(h0dt) if h0c is not None else None, None, None)


def gla_fused_chunk(q, k, v, gk=None, initial_state=None, chunk_size: int = 64, normalizer: bool = False):
    """Same contract as linearize.attention.gla.gla_chunked for ``gv=None`` and V <= MAX_V:
    q, k: [B, H, T, K]; v: [B, H, T, V]; gk: [B, H, T, K] log-decay or None; initial_state:
    [B, H, K, V'] or None. Returns (o [B, H, T, V'] in q's dtype, final state [B, H, K, V'] fp32).
    ``normalizer``: V' = V + 1, as if v had a ones column appended (the hybrids' normaliser: the
    last column of o is q . the decayed sum of keys) without reading or storing it.
    ``chunk_size`` is the kernel's BT (a power of two, 16..64, as chunk.chunk_size_for gives)."""
    if v.shape[-1] > MAX_V:
        raise ValueError(f"gla_fused_chunk: value width {v.shape[-1]} > {MAX_V}; use chunk.gla_chunked_triton")
    return FusedChunkGLA.apply(q, k, v, gk, initial_state, chunk_size, normalizer)
