"""Gated slot attention (GSA) as two passes of gated linear attention.

m memory slots per head, forget gate alpha_t = exp(g_t) in (0, 1)^m:

    K~_t = diag(alpha_t) K~_{t-1} + (1 - alpha_t) k_t^T          [m, D]
    V~_t = diag(alpha_t) V~_{t-1} + (1 - alpha_t) v_t^T          [m, V]
    o_t  = V~_t^T softmax(K~_t q_t * scale)

Pass 1 is GLA(q * scale, k, 1 - alpha, gate on the value dim); pass 2 is
GLA(softmax(pass 1), 1 - alpha, v, gate on the key dim). A padded step has g = 0, so 1 - alpha = 0
and nothing is written.

Shapes: q, k: [B, H, T, D]; v: [B, H, T, V]; g: [B, H, T, m] log-forget <= 0.
State: {"Sk": [B, H, D, m], "Sv": [B, H, m, V], "n": int}.
"""
from __future__ import annotations

import torch

from .gla import gla_chunked, gla_parallel, gla_recurrent, gla_step


def _two_passes(gla, q, k, v, g, scale, state=None, **kw):
    write = 1 - g.exp()
    s, Sk = gla(q * scale, k, write.to(q.dtype), gv=g, initial_state=None if state is None else state["Sk"], **kw)
    p = torch.softmax(s.float(), dim=-1).to(q.dtype)
    o, Sv = gla(p, write.to(q.dtype), v, gk=g, initial_state=None if state is None else state["Sv"], **kw)
    return o, {"Sk": Sk, "Sv": Sv, "n": q.shape[2] + (0 if state is None else state["n"])}


def gsa_parallel(q, k, v, g, scale, state=None):
    """Reference form (explicit decay tensors). Returns (o [B, H, T, V], state)."""
    return _two_passes(gla_parallel, q, k, v, g, scale, state)


def gsa_chunked(q, k, v, g, scale, state=None, chunk_size=64):
    """Linear-time form. Returns (o [B, H, T, V], state)."""
    return _two_passes(gla_chunked, q, k, v, g, scale, state, chunk_size=chunk_size)


def gsa_recurrent(q, k, v, g, scale, state=None):
    """Token-by-token loop. Returns (o [B, H, T, V], state)."""
    return _two_passes(gla_recurrent, q, k, v, g, scale, state)


def init_state(B, H, D, V, m, device, dtype):
    sdt = torch.float64 if dtype == torch.float64 else torch.float32
    return {
        "Sk": torch.zeros(B, H, D, m, device=device, dtype=sdt),
        "Sv": torch.zeros(B, H, m, V, device=device, dtype=sdt),
        "n": 0,
    }


def gsa_step(state, q, k, v, g, scale):
    """One token. q, k: [B, H, D]; v: [B, H, V]; g: [B, H, m]. Updates state in place; o [B, H, V]."""
    write = 1 - g.exp()
    s = gla_step(q * scale, k, write.to(q.dtype), None, g, state["Sk"])
    p = torch.softmax(s.float(), dim=-1).to(q.dtype)
    o = gla_step(p, write.to(q.dtype), v, g, None, state["Sv"])
    state["n"] += 1
    return o
