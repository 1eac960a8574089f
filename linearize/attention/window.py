"""Sliding-window softmax with optional meta-memory tokens: the local half of the hybrids.

For query i, the window is W(i) = {j : i - w < j <= i, valid_j}; meta tokens (learned keys and
values, no position) are visible to every query. Scores s = scale * q . k. The result is left
unnormalised so the caller can add the linear half under one shared normaliser:

    m_i   = max(s_ij over W(i) and meta)            (0 where nothing is visible; a stop-gradient)
    num_i = sum exp(s_ij - m_i) v_j                 [B, H, T, V]
    den_i = sum exp(s_ij - m_i)                     [B, H, T]

Shapes: q, k: [B, H, T, D]; v: [B, H, T, V]; valid: [B, T] bool or None;
meta_k: [H, M, D]; meta_v: [H, M, V] (or None).
"""
from __future__ import annotations

import torch


def _meta_scores(q, meta_k, scale):
    if meta_k is None or meta_k.shape[-2] == 0:
        return None
    return scale * torch.einsum("bhtd,hmd->bhtm", q, meta_k.to(q.dtype))


def _max_shifted_sums(s, values, ms, meta_v):
    """The three forms' shared ending. s: [B, H, ..., Q, J] scores, -inf where masked;
    values: [B, H, ..., J, V]; ms: [B, H, ..., Q, M] meta scores or None; meta_v: [H, M, V].
    Returns (num [B, H, ..., Q, V], den [B, H, ..., Q], p = exp(s - m))."""
    m = s.amax(-1) if ms is None else torch.maximum(s.amax(-1), ms.amax(-1))
    # the shift is a constant of the model, not a function of the scores: no gradient flows
    # through the max, so a flash-style kernel needs no argmax in its backward
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m)).detach()
    p = (s - m.unsqueeze(-1)).exp()
    num, den = p @ values, p.sum(-1)
    if ms is not None:
        pm = (ms - m.unsqueeze(-1)).exp()
        mv = meta_v.to(values.dtype).reshape(1, meta_v.shape[0], *([1] * (s.dim() - 4)), *meta_v.shape[1:])
        num = num + pm @ mv
        den = den + pm.sum(-1)
    return num, den, p


def window_parallel(q, k, v, scale, window, valid=None, meta_k=None, meta_v=None, return_probs=False):
    """Reference: full [T, T] scores with a band mask. ``return_probs`` adds exp(s - m) [B, H, T, T]."""
    T = q.shape[2]
    i = torch.arange(T, device=q.device)
    band = (i[:, None] - i[None, :] >= 0) & (i[:, None] - i[None, :] < window)
    mask = band[None, None]
    if valid is not None:
        mask = mask & valid[:, None, None, :]
    s = (scale * q @ k.transpose(-1, -2)).masked_fill(~mask, float("-inf"))
    num, den, p = _max_shifted_sums(s, v, _meta_scores(q, meta_k, scale), meta_v)
    return (num, den, p) if return_probs else (num, den)


def window_chunked(q, k, v, scale, window, valid=None, meta_k=None, meta_v=None, chunk_size=64):
    """Banded form: each chunk of C queries sees the C + w - 1 keys that can reach it.

    Cost O(T * (C + w) * D) time and memory, linear in T.
    """
    B, H, T, D = q.shape
    V = v.shape[-1]
    C, w = chunk_size, window
    N = -(-T // C)
    pad_end = N * C - T
    L = C + w - 1
    # keys padded on the left by w - 1 so that chunk n's keys start at n * C
    kp = torch.nn.functional.pad(k, (0, 0, w - 1, pad_end))
    vp = torch.nn.functional.pad(v, (0, 0, w - 1, pad_end))
    kb = kp.unfold(2, L, C).transpose(-1, -2)  # [B, H, N, L, D]
    vb = vp.unfold(2, L, C).transpose(-1, -2)  # [B, H, N, L, V]
    keypos = torch.arange(N, device=q.device)[:, None] * C - (w - 1) + torch.arange(L, device=q.device)
    qloc = torch.arange(C, device=q.device)
    lloc = torch.arange(L, device=q.device)
    band = (lloc[None, :] >= qloc[:, None]) & (lloc[None, :] <= qloc[:, None] + w - 1)  # [C, L]
    mask = band[None] & (keypos >= 0)[:, None, :] & (keypos < T)[:, None, :]  # [N, C, L]
    mask = mask[None, None]
    if valid is not None:
        vpad = torch.nn.functional.pad(valid, (w - 1, pad_end), value=False)
        vblk = vpad.unfold(1, L, C)  # [B, N, L]
        mask = mask & vblk[:, None, :, None, :]
    qp = torch.nn.functional.pad(q, (0, 0, 0, pad_end)).reshape(B, H, N, C, D)
    s = (scale * qp @ kb.transpose(-1, -2)).masked_fill(~mask, float("-inf"))  # [B, H, N, C, L]
    ms = _meta_scores(qp.reshape(B, H, N * C, D), meta_k, scale)
    if ms is not None:
        ms = ms.reshape(B, H, N, C, -1)
    num, den, _ = _max_shifted_sums(s, vb, ms, meta_v)
    return num.reshape(B, H, N * C, V)[:, :, :T], den.reshape(B, H, N * C)[:, :, :T]


def window_step(q, k_win, v_win, valid_win, scale, meta_k=None, meta_v=None):
    """One query against the ring buffer. q: [B, H, D]; k_win: [B, H, w, D]; v_win: [B, H, w, V];
    valid_win: [B, w] bool (slots that hold a real, non-padding token). Returns num [B, H, V], den [B, H].
    """
    q = q.unsqueeze(2)  # one query: [B, H, 1, D]
    s = (scale * q @ k_win.transpose(-1, -2)).masked_fill(~valid_win[:, None, None, :], float("-inf"))
    num, den, _ = _max_shifted_sums(s, v_win, _meta_scores(q, meta_k, scale), meta_v)
    return num.squeeze(2), den.squeeze(2)
