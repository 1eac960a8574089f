"""Gated linear attention (GLA) in three forms: parallel (the reference), chunked, recurrent.

    S_t = (exp(gk_t) exp(gv_t)^T) * S_{t-1} + k_t v_t^T        S: [K, V]
    o_t = S_t^T q_t

gk (a decay on the key dim, as in GLA) and gv (on the value dim, as in GSA's first pass) are
log-decays <= 0; either may be None (no decay). A padded step is an identity step: k = v = 0
and gk = gv = 0.

Shapes: q, k: [B, H, T, K]; v: [B, H, T, V]; gk: [B, H, T, K]; gv: [B, H, T, V];
state: [B, H, K, V]. Every function returns (o [B, H, T, V], final state [B, H, K, V]).
"""
from __future__ import annotations

import torch


def _state_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def gla_step(q, k, v, gk, gv, state):
    """One token. q, k: [B, H, K]; v: [B, H, V]; gk: [B, H, K] | None; gv: [B, H, V] | None.

    Updates ``state`` [B, H, K, V] in place and returns o [B, H, V] (in the state's dtype).
    """
    if gk is not None:
        state.mul_(gk.to(state.dtype).exp().unsqueeze(-1))
    if gv is not None:
        state.mul_(gv.to(state.dtype).exp().unsqueeze(-2))
    state.add_(k.to(state.dtype).unsqueeze(-1) * v.to(state.dtype).unsqueeze(-2))
    return torch.einsum("bhk,bhkv->bhv", q.to(state.dtype), state)


def gla_recurrent(q, k, v, gk=None, gv=None, initial_state=None):
    """The naive loop that states the math; the other forms are checked against it."""
    B, H, T, K = q.shape
    V = v.shape[-1]
    sdt = _state_dtype(q)
    state = (
        initial_state.to(sdt).clone()
        if initial_state is not None
        else q.new_zeros(B, H, K, V, dtype=sdt)
    )
    out = []
    for t in range(T):
        out.append(
            gla_step(
                q[:, :, t], k[:, :, t], v[:, :, t],
                None if gk is None else gk[:, :, t],
                None if gv is None else gv[:, :, t],
                state,
            )
        )
    o = torch.stack(out, dim=2) if out else v.new_zeros(B, H, 0, V)
    return o.to(q.dtype), state


def gla_parallel(q, k, v, gk=None, gv=None, initial_state=None):
    """Quadratic form with explicit [T, T, K] / [T, T, V] decay tensors: small T only.

    o_i = sum_{j<=i} sum_c q_ic k_jc exp(Gk_ic - Gk_jc) v_j * exp(Gv_i - Gv_j),  G = cumsum(g).
    """
    B, H, T, K = q.shape
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    neg = torch.finfo(torch.float64).min

    def decay(g):  # [B, H, T, T, C] = exp(G_i - G_j) on j <= i, 0 above
        G = g.double().cumsum(2)
        diff = (G.unsqueeze(3) - G.unsqueeze(2)).masked_fill(~causal[..., None], neg)
        return diff.exp().to(q.dtype), G

    if gk is None:
        A = (q @ k.transpose(-1, -2)).masked_fill(~causal, 0)
        Gk = None
    else:
        Dk, Gk = decay(gk)
        A = torch.einsum("bhic,bhjc,bhijc->bhij", q, k, Dk)
    if gv is None:
        o = A @ v
        Gv = None
    else:
        Dv, Gv = decay(gv)
        o = torch.einsum("bhij,bhijv,bhjv->bhiv", A, Dv, v)

    # final state: every key decayed to the last step
    wk = k if Gk is None else k * (Gk[:, :, -1:] - Gk).exp().to(k.dtype)
    wv = v if Gv is None else v * (Gv[:, :, -1:] - Gv).exp().to(v.dtype)
    state = (wk.transpose(-1, -2) @ wv).to(_state_dtype(q))
    if initial_state is not None:
        s0 = initial_state.to(state.dtype)
        qd = q if Gk is None else q * Gk.exp().to(q.dtype)
        o0 = torch.einsum("bhtk,bhkv->bhtv", qd.to(s0.dtype), s0)
        if Gv is not None:
            o0 = o0 * Gv.exp()
        o = o + o0.to(o.dtype)
        if Gk is not None:
            s0 = s0 * Gk[:, :, -1].exp().unsqueeze(-1)
        if Gv is not None:
            s0 = s0 * Gv[:, :, -1].exp().unsqueeze(-2)
        state = state + s0
    return o, state


def gla_chunked(q, k, v, gk=None, gv=None, initial_state=None, chunk_size: int = 64):
    """Chunked form: quadratic inside chunks of ``chunk_size``, a state carried between them.

    Inside a chunk the decays are taken relative to the chunk start, so exp(-G) stays below
    exp(chunk_size * max|g|): the caller bounds |g| (LinearizeConfig.gate_max) to keep it finite.
    Cost O(T * C * (K + V) + T * K * V).
    """
    B, H, T, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    N = -(-T // C)
    pad = N * C - T

    def chunks(x):
        if x is None:
            return None
        if pad:
            x = torch.nn.functional.pad(x, (0, 0, 0, pad))
        return x.reshape(B, H, N, C, x.shape[-1])

    qc, kc, vc, gkc, gvc = map(chunks, (q, k, v, gk, gv))
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()

    if gkc is not None:
        Gk = gkc.float().cumsum(3) if q.dtype != torch.float64 else gkc.cumsum(3)
        q_in = qc * Gk.exp().to(q.dtype)                       # decay from chunk start to i
        k_in = kc * (-Gk).exp().to(k.dtype)                    # undo decay from start to j
        k_out = kc * (Gk[:, :, :, -1:] - Gk).exp().to(k.dtype)  # decay from j to chunk end
    else:
        q_in, k_in, k_out = qc, kc, kc
    if gvc is not None:
        Gv = gvc.float().cumsum(3) if q.dtype != torch.float64 else gvc.cumsum(3)
        v_in = vc * (-Gv).exp().to(v.dtype)
        v_out = vc * (Gv[:, :, :, -1:] - Gv).exp().to(v.dtype)
        o_scale = Gv.exp().to(v.dtype)
    else:
        v_in, v_out, o_scale = vc, vc, None

    A = (q_in @ k_in.transpose(-1, -2)).masked_fill(~causal, 0)  # [B, H, N, C, C]
    o = A @ v_in

    sdt = _state_dtype(q)
    state = initial_state.to(sdt) if initial_state is not None else q.new_zeros(B, H, K, V, dtype=sdt)
    inter = []
    for n in range(N):
        inter.append((q_in[:, :, n].to(sdt) @ state).to(q.dtype))
        decay = None
        if gkc is not None:
            decay = Gk[:, :, n, -1].exp().to(sdt).unsqueeze(-1)
        if gvc is not None:
            dv = Gv[:, :, n, -1].exp().to(sdt).unsqueeze(-2)
            decay = dv if decay is None else decay * dv
        if decay is not None:
            state = state * decay
        state = state + (k_out[:, :, n].transpose(-1, -2) @ v_out[:, :, n]).to(sdt)
    o = o + torch.stack(inter, dim=2)
    if o_scale is not None:
        o = o * o_scale
    o = o.reshape(B, H, N * C, V)[:, :, :T]
    return o, state
