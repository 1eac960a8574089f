"""Triton sliding-window softmax with meta tokens (forward and backward): the local half of the hybrids.

Same contract as linearize.attention.window.window_chunked (unnormalised, max-shifted sums):

    shapes  q, k: [B, H, T, D]; v: [B, H, T, V]; valid: [B, T] bool or None; meta_k: [H, M, D]; meta_v: [H, M, V]
    window  W(i) = {j : i - w < j <= i, valid_j}, plus the M meta tokens for every query
    scores  s_ij = scale q_i . k_j;  m_i = max over W(i) and meta (0 if nothing visible; a stop-gradient)
    outputs num_i = sum_j exp(s_ij - m_i) v_j [B, H, T, V];  den_i = sum_j exp(s_ij - m_i) [B, H, T]
    grads   p = exp(s - m), dp_ij = dnum_i . v_j + dden_i, ds = p dp: dv = p^T dnum, dq = scale ds k, dk = scale ds^T q

Three kernels, flash-attention style over the band (a block of BQ queries reaches at most BQ + w - 1 keys):

  fwd     per (query block, head): meta tokens first, then the band's key blocks with an online max;
          stores num, den and m (fp32, kept for the backward)
  bwd_dq  per (query block, head): dq over the band and the meta tokens, and this block's share of
          dmeta_k / dmeta_v (per-block partials summed in PyTorch: deterministic, no atomics)
  bwd_dkv per (key block, head): dk, dv over the queries that see the block (j <= i < j + w)

Because m is a constant of the model, the backward needs no row-wise correction term (flash
attention's rowsum(dO * O)): p is recomputed from the stored m and used as is.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .chunk import pow2_block


@triton.jit
def _fwd_kernel(q_ptr, k_ptr, v_ptr, mk_ptr, mv_ptr, valid_ptr, num_ptr, den_ptr, m_ptr,
                scale, T, H, D, V, M, W,
                HAS_VALID: tl.constexpr, HAS_META: tl.constexpr, PREC: tl.constexpr,
                BQ: tl.constexpr, BK: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr):
    iq = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    i = iq * BQ + tl.arange(0, BQ)
    od = tl.arange(0, BD)
    ov = tl.arange(0, BV)
    md = od < D
    mv = ov < V
    mi = i < T
    q = tl.load(q_ptr + (bh * T + i[:, None]) * D + od[None, :], mask=mi[:, None] & md[None, :], other=0.)
    dt = q.dtype

    m = tl.full([BQ], float("-inf"), tl.float32)
    den = tl.zeros([BQ], dtype=tl.float32)
    acc = tl.zeros([BQ, BV], dtype=tl.float32)
    if HAS_META:
        # every query sees all meta tokens, so after them m is finite and the band can only raise it
        om = tl.arange(0, BM)
        mm = om < M
        km = tl.load(mk_ptr + (h * M + om[:, None]) * D + od[None, :], mask=mm[:, None] & md[None, :], other=0.)
        vm = tl.load(mv_ptr + (h * M + om[:, None]) * V + ov[None, :], mask=mm[:, None] & mv[None, :], other=0.)
        # own names: the compiler wants a loop-carried name ([BQ, BK] below) to keep one shape
        sm = tl.dot(q, tl.trans(km), input_precision=PREC) * scale
        sm = tl.where(mm[None, :], sm, float("-inf"))
        m = tl.max(sm, 1)
        pm = tl.exp(sm - m[:, None])
        den = tl.sum(pm, 1)
        acc = tl.dot(pm.to(dt), vm, input_precision=PREC)

    lo = tl.maximum(iq * BQ - W + 1, 0)
    hi = tl.minimum(iq * BQ + BQ, T)
    for j0 in range(lo, hi, BK):
        j = j0 + tl.arange(0, BK)
        mj = j < T
        kb = tl.load(k_ptr + (bh * T + j[:, None]) * D + od[None, :], mask=mj[:, None] & md[None, :], other=0.)
        vb = tl.load(v_ptr + (bh * T + j[:, None]) * V + ov[None, :], mask=mj[:, None] & mv[None, :], other=0.)
        s = tl.dot(q, tl.trans(kb), input_precision=PREC) * scale
        diff = i[:, None] - j[None, :]
        ok = (diff >= 0) & (diff < W) & mj[None, :]
        if HAS_VALID:
            ok = ok & (tl.load(valid_ptr + b * T + j, mask=mj, other=0) != 0)[None, :]
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        # a row that has seen nothing yet keeps m = -inf; shift it by 0 so exp gives 0, not nan
        m_sh = tl.where(m_new == float("-inf"), 0., m_new)
        alpha = tl.exp(m - m_sh)
        p = tl.exp(s - m_sh[:, None])
        den = den * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(dt), vb, input_precision=PREC)
        m = m_new

    m = tl.where(m == float("-inf"), 0., m)
    tl.store(num_ptr + (bh * T + i[:, None]) * V + ov[None, :], acc.to(num_ptr.dtype.element_ty),
             mask=mi[:, None] & mv[None, :])
    tl.store(den_ptr + bh * T + i, den.to(den_ptr.dtype.element_ty), mask=mi)
    tl.store(m_ptr + bh * T + i, m, mask=mi)


@triton.jit
def _bwd_dq_kernel(q_ptr, k_ptr, v_ptr, mk_ptr, mv_ptr, valid_ptr, m_ptr, dnum_ptr, dden_ptr,
                   dq_ptr, dmk_ptr, dmv_ptr,
                   scale, T, H, D, V, M, W, NQ,
                   HAS_VALID: tl.constexpr, HAS_META: tl.constexpr, META_GRAD: tl.constexpr, PREC: tl.constexpr,
                   BQ: tl.constexpr, BK: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr):
    iq = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    i = iq * BQ + tl.arange(0, BQ)
    od = tl.arange(0, BD)
    ov = tl.arange(0, BV)
    md = od < D
    mv = ov < V
    mi = i < T
    q = tl.load(q_ptr + (bh * T + i[:, None]) * D + od[None, :], mask=mi[:, None] & md[None, :], other=0.)
    dt = q.dtype
    do = tl.load(dnum_ptr + (bh * T + i[:, None]) * V + ov[None, :], mask=mi[:, None] & mv[None, :], other=0.).to(dt)
    dd = tl.load(dden_ptr + bh * T + i, mask=mi, other=0.).to(tl.float32)
    mrow = tl.load(m_ptr + bh * T + i, mask=mi, other=0.)

    dq = tl.zeros([BQ, BD], dtype=tl.float32)
    if HAS_META:
        om = tl.arange(0, BM)
        mm = om < M
        km = tl.load(mk_ptr + (h * M + om[:, None]) * D + od[None, :], mask=mm[:, None] & md[None, :], other=0.)
        vm = tl.load(mv_ptr + (h * M + om[:, None]) * V + ov[None, :], mask=mm[:, None] & mv[None, :], other=0.)
        sm = tl.dot(q, tl.trans(km), input_precision=PREC) * scale
        pm = tl.where(mi[:, None] & mm[None, :], tl.exp(sm - mrow[:, None]), 0.)
        dsm = pm * (tl.dot(do, tl.trans(vm), input_precision=PREC) + dd[:, None])
        dq += tl.dot(dsm.to(dt), km, input_precision=PREC)
        if META_GRAD:
            # this query block's share; the caller sums the [B, NQ] partials of each head
            part = (bh * NQ + iq) * BM + om
            dmv = tl.dot(tl.trans(pm.to(dt)), do, input_precision=PREC)
            dmk = tl.dot(tl.trans(dsm.to(dt)), q, input_precision=PREC) * scale
            tl.store(dmv_ptr + part[:, None] * V + ov[None, :], dmv, mask=mm[:, None] & mv[None, :])
            tl.store(dmk_ptr + part[:, None] * D + od[None, :], dmk, mask=mm[:, None] & md[None, :])

    lo = tl.maximum(iq * BQ - W + 1, 0)
    hi = tl.minimum(iq * BQ + BQ, T)
    for j0 in range(lo, hi, BK):
        j = j0 + tl.arange(0, BK)
        mj = j < T
        kb = tl.load(k_ptr + (bh * T + j[:, None]) * D + od[None, :], mask=mj[:, None] & md[None, :], other=0.)
        vb = tl.load(v_ptr + (bh * T + j[:, None]) * V + ov[None, :], mask=mj[:, None] & mv[None, :], other=0.)
        s = tl.dot(q, tl.trans(kb), input_precision=PREC) * scale
        diff = i[:, None] - j[None, :]
        ok = (diff >= 0) & (diff < W) & mj[None, :]
        if HAS_VALID:
            ok = ok & (tl.load(valid_ptr + b * T + j, mask=mj, other=0) != 0)[None, :]
        p = tl.where(ok, tl.exp(s - mrow[:, None]), 0.)
        ds = p * (tl.dot(do, tl.trans(vb), input_precision=PREC) + dd[:, None])
        dq += tl.dot(ds.to(dt), kb, input_precision=PREC)

    tl.store(dq_ptr + (bh * T + i[:, None]) * D + od[None, :], (dq * scale).to(dq_ptr.dtype.element_ty),
             mask=mi[:, None] & md[None, :])


@triton.jit
def _bwd_dkv_kernel(q_ptr, k_ptr, v_ptr, valid_ptr, m_ptr, dnum_ptr, dden_ptr, dk_ptr, dv_ptr,
                    scale, T, H, D, V, W,
                    HAS_VALID: tl.constexpr, PREC: tl.constexpr,
                    BQ: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr):
    ik = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    j = ik * BK + tl.arange(0, BK)
    od = tl.arange(0, BD)
    ov = tl.arange(0, BV)
    md = od < D
    mv = ov < V
    mj = j < T
    kb = tl.load(k_ptr + (bh * T + j[:, None]) * D + od[None, :], mask=mj[:, None] & md[None, :], other=0.)
    vb = tl.load(v_ptr + (bh * T + j[:, None]) * V + ov[None, :], mask=mj[:, None] & mv[None, :], other=0.)
    dt = kb.dtype
    key_ok = mj
    if HAS_VALID:
        key_ok = key_ok & (tl.load(valid_ptr + b * T + j, mask=mj, other=0) != 0)

    # transposed scores [BK, BQ] so that dk and dv come out of the dots with keys as rows
    dk = tl.zeros([BK, BD], dtype=tl.float32)
    dv = tl.zeros([BK, BV], dtype=tl.float32)
    lo = ik * BK
    hi = tl.minimum(ik * BK + BK + W - 1, T)
    for i0 in range(lo, hi, BQ):
        i = i0 + tl.arange(0, BQ)
        mi = i < T
        q = tl.load(q_ptr + (bh * T + i[:, None]) * D + od[None, :], mask=mi[:, None] & md[None, :], other=0.)
        do = tl.load(dnum_ptr + (bh * T + i[:, None]) * V + ov[None, :], mask=mi[:, None] & mv[None, :],
                     other=0.).to(dt)
        dd = tl.load(dden_ptr + bh * T + i, mask=mi, other=0.).to(tl.float32)
        mrow = tl.load(m_ptr + bh * T + i, mask=mi, other=0.)
        sT = tl.dot(kb, tl.trans(q), input_precision=PREC) * scale
        diff = i[None, :] - j[:, None]
        ok = (diff >= 0) & (diff < W) & mi[None, :] & key_ok[:, None]
        pT = tl.where(ok, tl.exp(sT - mrow[None, :]), 0.)
        dv += tl.dot(pT.to(dt), do, input_precision=PREC)
        dsT = pT * (tl.dot(vb, tl.trans(do), input_precision=PREC) + dd[None, :])
        dk += tl.dot(dsT.to(dt), q, input_precision=PREC)

    tl.store(dk_ptr + (bh * T + j[:, None]) * D + od[None, :], (dk * scale).to(dk_ptr.dtype.element_ty),
             mask=mj[:, None] & md[None, :])
    tl.store(dv_ptr + (bh * T + j[:, None]) * V + ov[None, :], dv.to(dv_ptr.dtype.element_ty),
             mask=mj[:, None] & mv[None, :])


# per kernel: query block, key block, launch settings. Measured on an H100 (bf16, 32 heads x 128, w = 64,
# T = 8K and 32K): best or within 4% of the best of the variants tried (32 / 128 blocks, 8 warps, 1 or 3
# stages). Avoid 8 warps with 1 stage for the forward: under Triton 3.6 it hit an illegal address there.
LAUNCH = {
    "fwd": dict(BQ=64, BK=64, num_warps=4, num_stages=2),
    "dq": dict(BQ=64, BK=64, num_warps=4, num_stages=2),
    "dkv": dict(BQ=64, BK=64, num_warps=4, num_stages=2),
}


def _config(D, V, chunk_size):
    """The largest block any kernel may use, and the padded head dims. A caller's chunk below 64 caps
    the blocks (the tests run small blocks that way); wide heads (> 128) take 32 (a [64, 256] fp32
    accumulator would spill)."""
    BD, BV = pow2_block(D), pow2_block(V)
    cap = 128 if chunk_size >= 64 else max(16, 1 << (max(int(chunk_size), 1).bit_length() - 1))
    if max(BD, BV) > 128:
        cap = min(cap, 32)
    return cap, BD, BV


def _launch(kernel, cap):
    c = dict(LAUNCH[kernel])
    c["BQ"], c["BK"] = min(c["BQ"], cap), min(c["BK"], cap)
    return c


def _prec(dtype):
    # fp32 inputs get exact fp32 dots (the default on the GPU would be tf32, ~1e-3 relative);
    # bf16 / fp16 ignore this
    return "ieee" if dtype == torch.float32 else "tf32"


class WindowSoftmaxFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, meta_k, meta_v, valid, scale, window, chunk_size):
        B, H, T, D = q.shape
        V = v.shape[-1]
        has_meta, has_valid = meta_k is not None, valid is not None
        M = meta_k.shape[1] if has_meta else 0
        cap, BD, BV = _config(D, V, chunk_size)
        BM = pow2_block(max(M, 1))
        dt = q.dtype
        qf = q.reshape(B * H, T, D).contiguous()
        kf = k.to(dt).reshape(B * H, T, D).contiguous()
        vf = v.to(dt).reshape(B * H, T, V).contiguous()
        mk = meta_k.to(dt).contiguous() if has_meta else qf
        mv = meta_v.to(dt).contiguous() if has_meta else qf
        vm = valid.to(torch.uint8).contiguous() if has_valid else qf
        num = torch.empty(B * H, T, V, device=q.device, dtype=dt)
        den = torch.empty(B * H, T, device=q.device, dtype=dt)
        m = torch.empty(B * H, T, device=q.device, dtype=torch.float32)
        cfg = _launch("fwd", cap)
        _fwd_kernel[(triton.cdiv(T, cfg["BQ"]), B * H)](
            qf, kf, vf, mk, mv, vm, num, den, m,
            float(scale), T, H, D, V, M, int(window),
            HAS_VALID=has_valid, HAS_META=has_meta, PREC=_prec(dt),
            BM=BM, BD=BD, BV=BV, **cfg)
        ctx.save_for_backward(qf, kf, vf, mk, mv, vm, m)
        ctx.cfg = (B, H, T, D, V, M, has_meta, has_valid, float(scale), int(window), cap, BD, BV, BM)
        ctx.dtypes = (q.dtype, k.dtype, v.dtype,
                      meta_k.dtype if has_meta else None, meta_v.dtype if has_meta else None)
        return num.view(B, H, T, V), den.view(B, H, T)

    @staticmethod
    def backward(ctx, dnum, dden):
        qf, kf, vf, mk, mv, vm, m = ctx.saved_tensors
        B, H, T, D, V, M, has_meta, has_valid, scale, window, cap, BD, BV, BM = ctx.cfg
        qdt, kdt, vdt, mkdt, mvdt = ctx.dtypes
        need_q, need_k, need_v, need_mk, need_mv = ctx.needs_input_grad[:5]
        dev = qf.device
        if dnum is None:
            dnum = torch.zeros(B, H, T, V, device=dev, dtype=qf.dtype)
        if dden is None:
            dden = torch.zeros(B, H, T, device=dev, dtype=torch.float32)
        dnum = dnum.reshape(B * H, T, V).contiguous()
        dden = dden.reshape(B * H, T).contiguous()
        prec = _prec(qf.dtype)
        dq = dk = dv = dmk = dmv = None
        meta_grad = has_meta and (need_mk or need_mv)
        if need_q or meta_grad:
            cfg = _launch("dq", cap)
            NQ = triton.cdiv(T, cfg["BQ"])
            dqf = torch.empty(B * H, T, D, device=dev, dtype=qdt)
            pk = torch.empty(B * H, NQ, BM, D, device=dev, dtype=torch.float32) if meta_grad else m
            pv = torch.empty(B * H, NQ, BM, V, device=dev, dtype=torch.float32) if meta_grad else m
            _bwd_dq_kernel[(NQ, B * H)](
                qf, kf, vf, mk, mv, vm, m, dnum, dden, dqf, pk, pv,
                scale, T, H, D, V, M, window, NQ,
                HAS_VALID=has_valid, HAS_META=has_meta, META_GRAD=meta_grad, PREC=prec,
                BM=BM, BD=BD, BV=BV, **cfg)
            dq = dqf.view(B, H, T, D) if need_q else None
            if meta_grad:
                # rows M..BM of the partials are never written: slice them off before summing
                dmk = pk.view(B, H, NQ, BM, D)[:, :, :, :M].sum((0, 2)).to(mkdt) if need_mk else None
                dmv = pv.view(B, H, NQ, BM, V)[:, :, :, :M].sum((0, 2)).to(mvdt) if need_mv else None
        if need_k or need_v:
            dkf = torch.empty(B * H, T, D, device=dev, dtype=kdt)
            dvf = torch.empty(B * H, T, V, device=dev, dtype=vdt)
            cfg = _launch("dkv", cap)
            _bwd_dkv_kernel[(triton.cdiv(T, cfg["BK"]), B * H)](
                qf, kf, vf, vm, m, dnum, dden, dkf, dvf,
                scale, T, H, D, V, window,
                HAS_VALID=has_valid, PREC=prec, BD=BD, BV=BV, **cfg)
            dk = dkf.view(B, H, T, D) if need_k else None
            dv = dvf.view(B, H, T, V) if need_v else None
        return dq, dk, dv, dmk, dmv, None, None, None, None


def can_run(q, k, v, meta_k=None, meta_v=None, valid=None) -> bool:
    """Whether the kernels take these inputs: CUDA (or Triton's CPU interpreter), fp16 / bf16 / fp32,
    head dims up to 256, q, k, v of one dtype."""
    on_device = q.is_cuda or (q.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")
    return (on_device and q.dtype in (torch.float16, torch.bfloat16, torch.float32)
            and k.dtype == q.dtype and v.dtype == q.dtype
            and q.shape[-1] <= 256 and v.shape[-1] <= 256 and q.numel() > 0
            and all(t is None or t.device == q.device for t in (k, v, meta_k, meta_v, valid)))


def window_chunked_triton(q, k, v, scale, window, valid=None, meta_k=None, meta_v=None, chunk_size=64):
    """Same contract as linearize.attention.window.window_chunked; returns (num, den) in q's dtype.
    ``chunk_size`` below 64 caps the kernels' blocks (see _config); the result does not depend on it."""
    if meta_k is not None and meta_k.shape[-2] == 0:
        meta_k = meta_v = None
    if not can_run(q, k, v, meta_k, meta_v, valid):
        from linearize.attention.window import window_chunked

        return window_chunked(q, k, v, scale, window, valid, meta_k, meta_v, chunk_size)
    return WindowSoftmaxFunction.apply(q, k, v, meta_k, meta_v, valid, scale, window, chunk_size)
