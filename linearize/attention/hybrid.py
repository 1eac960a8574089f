"""Sliding-window softmax + (gated) linear attention under one normaliser: Hedgehog and Lizard.

For query i (window w, G = cumsum(g), gamma = sigmoid(mix) per head):

    softmax half (window.py):  num_sm, den_sm over keys i-w < j <= i and the meta tokens
    linear half, keys the window has dropped (j <= i - w):
        num_lin = sum_j (fq_i * exp(G_i - G_j)) . fk_j  v_j
        den_lin = sum_j (fq_i * exp(G_i - G_j)) . fk_j
    o_i = (gamma num_sm + (1 - gamma) num_lin) / (gamma den_sm + (1 - gamma) den_lin)

Hedgehog has no gate (g = None, G = 0) and no meta tokens; Lizard has both.

Chunked form: the linear half is plain causal GLA over keys shifted right by w,
k'_t = fk_{t-w} * exp(G_t - G_{t-w}), v'_t = [v_{t-w}, 1] (the 1 carries the normaliser).
Recurrent form: a ring buffer of the last w keys; when key t-w leaves it, it enters the state
with the decay accumulated while it sat in the window (the sum of the ring's gates).

Shapes: q, k: [B, H, T, D] (after RoPE); v: [B, H, T, V]; fq, fk: [B, H, T, F] (>= 0);
g: [B, H, T, F] log-decay <= 0 or None; mix: [H]; valid: [B, T] bool or None;
meta_k: [H, M, D], meta_v: [H, M, V] or None. Padded steps must arrive with fk = v = g = 0.
"""
from __future__ import annotations

import torch

from .fusion import fused
from .gla import gla_chunked
from .window import window_chunked, window_parallel, window_step


@fused
def combine(num_sm, den_sm, num_lin, den_lin, mix, linear_enabled=True):
    """Shared normaliser. num: [B, H, T, V] (or [B, H, V]); den: num without the last dim.

    Computed in float32 at least (the two halves' sums can nearly cancel in gamma's gradient;
    bf16 there is noise), returned in num_sm's dtype."""
    out_dtype = num_sm.dtype
    ct = torch.promote_types(num_sm.dtype, torch.float32)
    num_sm, den_sm = num_sm.to(ct), den_sm.to(ct)
    if not linear_enabled:
        num, den = num_sm, den_sm
    else:
        shape = (1, -1) + (1,) * (den_sm.dim() - 2)
        gamma = torch.sigmoid(mix.to(ct)).reshape(shape)
        num = gamma.unsqueeze(-1) * num_sm + (1 - gamma.unsqueeze(-1)) * num_lin.to(ct)
        den = gamma * den_sm + (1 - gamma) * den_lin.to(ct)
    ok = den > 0  # a padded query that sees nothing gets 0, not nan
    safe = torch.where(ok, den, torch.ones_like(den))
    return torch.where(ok.unsqueeze(-1), num / safe.unsqueeze(-1), torch.zeros_like(num)).to(out_dtype)


def hybrid_parallel(q, k, v, fq, fk, g, mix, window, scale, valid=None, meta_k=None, meta_v=None,
                    linear_enabled=True, return_weights=False):
    """Reference form: explicit [T, T] (and [T, T, F] decay) tensors. Returns o [B, H, T, V], or
    with ``return_weights`` the normalised weights [B, H, T, T] each query puts on each key."""
    T = q.shape[2]
    num_sm, den_sm, p = window_parallel(q, k, v, scale, window, valid, meta_k, meta_v, return_probs=True)
    i = torch.arange(T, device=q.device)
    lin_mask = (i[:, None] - i[None, :] >= window)[None, None]
    if valid is not None:
        lin_mask = lin_mask & valid[:, None, None, :]
    if g is None:
        a = fq @ fk.transpose(-1, -2)
    else:
        G = g.double().cumsum(2)
        diff = (G.unsqueeze(3) - G.unsqueeze(2)).masked_fill(~lin_mask[..., None], -1e300)
        a = torch.einsum("bhif,bhjf,bhijf->bhij", fq, fk, diff.exp().to(fq.dtype))
    a = a.masked_fill(~lin_mask, 0)
    if return_weights:  # the same combination as `combine`, applied to the weights instead of values
        return combine(p, den_sm, a, a.sum(-1), mix, linear_enabled)
    return combine(num_sm, den_sm, a @ v, a.sum(-1), mix, linear_enabled)


def _shift(x, w):
    """x: [B, H, T, C] -> x_{t-w} (zeros for t < w)."""
    T = x.shape[2]
    return torch.nn.functional.pad(x, (0, 0, w, 0))[:, :, :T]


@fused
def lagged_keys(fk, v, g, window, ones: bool = True):
    """The linear half's GLA inputs: keys shifted by w carrying their in-window decay, and
    values with a ones column for the normaliser. Returns (k' [B,H,T,F], v' [B,H,T,V+1]);
    ``ones=False``: v' without that column, [B,H,T,V] (for a kernel that adds it itself)."""
    k_shift = _shift(fk, window)
    if g is not None:
        k_shift = k_shift * window_sums(g, window).exp().to(fk.dtype)
    return k_shift, lagged_values(v, window, ones)


def lagged_values(v, window, ones: bool = True):
    """lagged_keys' v': [B, H, T, V] -> v_{t-w} (zeros for t < w), with a ones column appended first
    when ``ones``."""
    # a padded step carries fk = 0, so its ones column never reaches the state
    vv = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1) if ones else v
    return _shift(vv, window)


def window_sums(g, window):
    """sum_{u = t-w+1..t} g_u for every t: [B, H, T, C] -> same shape, in float32 at least.

    A global cumsum would subtract two numbers that grow with T (precision lost over long
    sequences); here every term is a prefix sum inside a block of w steps, so its size is bounded
    by w * max|g| whatever T is. With blocks of w, the window ending at t (offset o in block b)
    is prefix(b, o) + [prefix(b-1, w-1) - prefix(b-1, o)].
    """
    B, H, T, C = g.shape
    w = window
    nb = -(-T // w)
    gf = g.float() if g.dtype in (torch.bfloat16, torch.float16) else g
    P = torch.nn.functional.pad(gf, (0, 0, 0, nb * w - T)).reshape(B, H, nb, w, C).cumsum(3)
    prev = torch.nn.functional.pad(P, (0, 0, 0, 0, 1, 0))[:, :, :nb]  # block b-1's prefix sums (0 for b = 0)
    return (P + prev[:, :, :, w - 1:] - prev).reshape(B, H, nb * w, C)[:, :, :T]


def hybrid_chunked(q, k, v, fq, fk, g, mix, window, scale, valid=None, meta_k=None, meta_v=None,
                   linear_enabled=True, chunk_size=64, return_state=False):
    """Linear-time form. Returns o [B, H, T, V], and with ``return_state`` the recurrent state
    after the last token (what ``hybrid_step`` continues from)."""
    num_sm, den_sm = window_chunked(q, k, v, scale, window, valid, meta_k, meta_v, chunk_size)
    V = v.shape[-1]
    if linear_enabled or return_state:
        kk, vv = lagged_keys(fk, v, g, window)
        o_lin, S = gla_chunked(fq, kk, vv, gk=g, chunk_size=chunk_size)
        num_lin, den_lin = o_lin[..., :V], o_lin[..., V]
    else:
        num_lin = den_lin = None
    o = combine(num_sm, den_sm, num_lin, den_lin, mix, linear_enabled)
    if not return_state:
        return o
    return o, ring_state_from_sequence(k, v, fk, g, valid, window, S)


# ----------------------------------------------------------------------------- recurrent form

def step_counter(n: int, B: int, H: int, device) -> torch.Tensor:
    """state["pos"], the device step counter the Triton decode kernels keep beside a state after n
    tokens (so a CUDA graph can replay the step): int32 [B, H], one per head, every entry n."""
    return torch.full((B, H), int(n), dtype=torch.int32, device=device)


def init_state(B, H, D, V, F, window, gated, device, dtype):
    """Empty recurrent state. Ring slots hold post-RoPE keys; slot of position p is p % window."""
    sdt = torch.float64 if dtype == torch.float64 else torch.float32
    state = {
        "k": torch.zeros(B, H, window, D, device=device, dtype=dtype),
        "v": torch.zeros(B, H, window, V, device=device, dtype=dtype),
        "fk": torch.zeros(B, H, window, F, device=device, dtype=dtype),
        "valid": torch.zeros(B, window, device=device, dtype=torch.bool),
        "S": torch.zeros(B, H, F, V + 1, device=device, dtype=sdt),
        "n": 0,
    }
    if gated:
        state["g"] = torch.zeros(B, H, window, F, device=device, dtype=sdt)
    return state


def ring_state_from_sequence(k, v, fk, g, valid, window, S, start: int = 0):
    """The state after a full sequence: the last w tokens in their ring slots, plus S. ``start``:
    the stream position of the sequence's first token (a continuation's sequence starts w tokens
    before the new ones, possibly before position 0)."""
    B, H, T, D = k.shape
    state = init_state(B, H, D, v.shape[-1], fk.shape[-1], window, g is not None, k.device, k.dtype)
    state["S"].copy_(S)
    pos = torch.arange(max(0, T - window), T, device=k.device)
    slots = (pos + start) % window
    state["k"][:, :, slots] = k[:, :, pos]
    state["v"][:, :, slots] = v[:, :, pos]
    state["fk"][:, :, slots] = fk[:, :, pos]
    state["valid"][:, slots] = True if valid is None else valid[:, pos]
    if g is not None:
        state["g"][:, :, slots] = g[:, :, pos].to(state["g"].dtype)
    state["n"] = start + T
    return state


def hybrid_chunked_continue(state, q, k, v, fq, fk, g, mix, window, scale, valid=None, meta_k=None, meta_v=None,
                            linear_enabled=True, chunk_size=64, window_fn=window_chunked, gla_fn=gla_chunked):
    """T more tokens after ``state`` (n tokens seen), in the chunked form: the ring's w tokens, in
    stream order, are put in front of the new ones, so the window half sees them and the linear
    half's lagged keys are the ring's keys with their in-window decay; the linear state continues
    from state["S"]. Same shapes as hybrid_chunked. Returns (o [B, H, T, V], the state after n + T)."""
    n, w = int(state["n"]), state["k"].shape[2]
    B, H, T, _ = q.shape
    order = (torch.arange(w, device=q.device) + n) % w  # slots of positions n - w .. n - 1
    cat = lambda old, new: torch.cat([old[:, :, order].to(new.dtype), new], 2)  # noqa: E731
    kX, vX, fkX = cat(state["k"], k), cat(state["v"], v), cat(state["fk"], fk)
    gX = None if g is None else cat(state["g"], g.float())
    new_valid = torch.ones(B, T, dtype=torch.bool, device=q.device) if valid is None else valid.bool()
    validX = torch.cat([state["valid"][:, order], new_valid], 1)
    qX = torch.cat([q.new_zeros(B, H, w, q.shape[-1]), q], 2)  # the ring's queries are not asked
    num_sm, den_sm = window_fn(qX, kX, vX, scale, window, validX, meta_k, meta_v, chunk_size)
    num_sm, den_sm = num_sm[:, :, w:], den_sm[:, :, w:]
    V = v.shape[-1]
    kk, vv = lagged_keys(fkX, vX, gX, window)
    o_lin, S = gla_fn(fq, kk[:, :, w:].contiguous(), vv[:, :, w:].contiguous(), gk=g,
                      initial_state=state["S"], chunk_size=chunk_size)
    o = combine(num_sm, den_sm, o_lin[..., :V], o_lin[..., V], mix, linear_enabled)
    return o, ring_state_from_sequence(kX, vX, fkX, gX, validX, window, S.detach().to(state["S"].dtype), start=n - w)


def hybrid_step(state, q, k, v, fq, fk, g, mix, scale, valid=None, meta_k=None, meta_v=None,
                linear_enabled=True):
    """One token. q, k: [B, H, D]; v: [B, H, V]; fq, fk, g: [B, H, F]; valid: [B] bool or None.
    Updates ``state`` in place; returns o [B, H, V]."""
    n, w = state["n"], state["k"].shape[2]
    slot = n % w
    S = state["S"]
    if n >= w:  # key n - w leaves the window and enters the linear state
        ek = state["fk"][:, :, slot].to(S.dtype, copy=True)  # 0 for a padded token
        ev = torch.cat([state["v"][:, :, slot], torch.ones_like(v[..., :1])], -1)
    state["k"][:, :, slot] = k
    state["v"][:, :, slot] = v
    state["fk"][:, :, slot] = fk
    state["valid"][:, slot] = True if valid is None else valid
    if g is not None:
        state["g"][:, :, slot] = g.to(state["g"].dtype)
        S.mul_(g.to(S.dtype).exp().unsqueeze(-1))
    if n >= w:
        if g is not None:
            ek = ek * state["g"].sum(2).exp()  # decay while it sat in the window: gates n-w+1..n
        S.add_(ek.unsqueeze(-1) * ev.to(S.dtype).unsqueeze(-2))
    state["n"] = n + 1
    num_sm, den_sm = window_step(q, state["k"], state["v"], state["valid"], scale, meta_k, meta_v)
    lin = torch.einsum("bhf,bhfv->bhv", fq.to(S.dtype), S)
    V = v.shape[-1]
    return combine(num_sm, den_sm, lin[..., :V], lin[..., V], mix, linear_enabled)


def hybrid_recurrent(q, k, v, fq, fk, g, mix, window, scale, valid=None, meta_k=None, meta_v=None,
                     linear_enabled=True, state=None):
    """Token-by-token loop over ``hybrid_step``. Returns (o [B, H, T, V], state)."""
    B, H, T, D = q.shape
    if state is None:
        state = init_state(B, H, D, v.shape[-1], fk.shape[-1], window, g is not None, q.device, q.dtype)
    out = []
    for t in range(T):
        out.append(hybrid_step(
            state, q[:, :, t], k[:, :, t], v[:, :, t], fq[:, :, t], fk[:, :, t],
            None if g is None else g[:, :, t], mix, scale,
            None if valid is None else valid[:, t], meta_k, meta_v, linear_enabled,
        ).to(v.dtype))
    return torch.stack(out, 2), state
