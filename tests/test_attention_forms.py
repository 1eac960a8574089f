"""Parallel, chunked and recurrent forms compute the same function (outputs and gradients),
for every method, on random inputs: odd lengths, padding, batch > 1.

Tolerances (relative to the output's max magnitude): fp64 1e-5, fp32 1e-4.
"""
from __future__ import annotations

import pytest
import torch

from linearize.attention.gated_slots import gsa_chunked, gsa_parallel, gsa_recurrent
from linearize.attention.gla import gla_chunked, gla_parallel, gla_recurrent
from linearize.attention.hybrid import hybrid_chunked, hybrid_parallel, hybrid_recurrent, hybrid_step

TOL = {torch.float64: 1e-5, torch.float32: 1e-4}


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def padding(B, T, gen):
    valid = torch.ones(B, T, dtype=torch.bool)
    if B > 1:
        valid[1, : int(torch.randint(1, max(2, T // 2), (1,), generator=gen))] = False  # left padding
    return valid


def hybrid_inputs(B, H, T, D, F, M, dtype, gated, gen, padded=True):
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)
    q, k, v = r(B, H, T, D), r(B, H, T, D), r(B, H, T, D)
    fq = torch.softmax(r(B, H, T, F), -1)
    fk = torch.softmax(r(B, H, T, F), -1)
    g = -torch.rand(B, H, T, F, generator=gen, dtype=dtype) * 0.9 if gated else None
    valid = padding(B, T, gen) if padded else None
    if valid is not None:  # the modules zero padded steps before the core; do the same here
        keep = valid[:, None, :, None].to(dtype)
        fk, v = fk * keep, v * keep
        g = None if g is None else g * keep
    meta_k, meta_v = (r(H, M, D), r(H, M, D)) if M else (None, None)
    return dict(q=q, k=k, v=v, fq=fq, fk=fk, g=g, mix=r(H), scale=D ** -0.5, valid=valid,
                meta_k=meta_k, meta_v=meta_v)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T", [1, 13, 37])
@pytest.mark.parametrize("gk,gv", [(True, False), (False, True), (True, True), (False, False)])
def test_gla_forms_agree(dtype, T, gk, gv):
    gen = torch.Generator().manual_seed(T * 7 + gk + 2 * gv)
    B, H, K, V = 2, 3, 6, 5
    q, k = torch.randn(B, H, T, K, generator=gen, dtype=dtype), torch.randn(B, H, T, K, generator=gen, dtype=dtype)
    v = torch.randn(B, H, T, V, generator=gen, dtype=dtype)
    g_k = -torch.rand(B, H, T, K, generator=gen, dtype=dtype) if gk else None
    g_v = -torch.rand(B, H, T, V, generator=gen, dtype=dtype) if gv else None
    s0 = torch.randn(B, H, K, V, generator=gen, dtype=dtype)
    o_ref, s_ref = gla_recurrent(q, k, v, g_k, g_v, s0)
    for fn, kw in ((gla_parallel, {}), (gla_chunked, {"chunk_size": 8})):
        o, s = fn(q, k, v, g_k, g_v, s0, **kw)
        assert rel_err(o, o_ref) < TOL[dtype]
        assert rel_err(s, s_ref) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T", [1, 7, 29, 40])
@pytest.mark.parametrize("method", ["hedgehog", "lizard"])
def test_hybrid_forms_agree(dtype, T, method):
    gen = torch.Generator().manual_seed(100 + T)
    gated = method == "lizard"
    a = hybrid_inputs(2, 3, T, 8, 6, 3 if gated else 0, dtype, gated, gen)
    w = 5
    ref = hybrid_parallel(window=w, **a)
    chunked, state_c = hybrid_chunked(window=w, chunk_size=8, return_state=True, **a)
    rec, state_r = hybrid_recurrent(window=w, **a)
    assert rel_err(chunked, ref) < TOL[dtype]
    assert rel_err(rec, ref) < TOL[dtype]
    assert rel_err(state_c["S"], state_r["S"]) < TOL[dtype]
    # the chunked prefill's state continues exactly like the recurrent one
    b = hybrid_inputs(2, 3, 1, 8, 6, 0, dtype, gated, gen, padded=False)
    step_in = {n: (x[:, :, 0] if torch.is_tensor(x) and x.dim() == 4 else x)
               for n, x in b.items() if n not in ("mix", "meta_k", "meta_v", "valid", "scale")}
    common = dict(mix=a["mix"], scale=a["scale"], meta_k=a["meta_k"], meta_v=a["meta_v"])
    o1 = hybrid_step(state_c, **step_in, **common)
    o2 = hybrid_step(state_r, **step_in, **common)
    assert rel_err(o1, o2) < TOL[dtype]


def _split(a, T1):
    """The first T1 and the remaining steps of hybrid_inputs' per-step tensors (the rest shared)."""
    head, tail = {}, {}
    for n, x in a.items():
        if n == "valid" and x is not None:
            head[n], tail[n] = x[:, :T1], x[:, T1:]
        elif torch.is_tensor(x) and x.dim() == 4:
            head[n], tail[n] = x[:, :, :T1], x[:, :, T1:]
        else:
            head[n] = tail[n] = x
    return head, tail


@pytest.mark.parametrize("T1,T2", [(3, 9), (12, 4), (17, 20), (1, 1)])
@pytest.mark.parametrize("method", ["hedgehog", "lizard"])
def test_hybrid_chunked_continuation_matches_recurrent(T1, T2, method):
    """A chunked continuation from a state (the ring's w tokens in front of the new ones, the
    linear state carried) gives the recurrent form's outputs and state: the ring not yet full
    (T1 < w), not aligned to it, longer than a chunk; padding in the first part."""
    from linearize.attention.hybrid import hybrid_chunked_continue

    dtype = torch.float64
    gen = torch.Generator().manual_seed(500 + T1 * 7 + T2)
    gated = method == "lizard"
    w = 5
    a = hybrid_inputs(2, 3, T1 + T2, 8, 6, 3 if gated else 0, dtype, gated, gen)
    a["valid"][:, T1:] = True  # padding only at the start, as prompts have it
    rec, st_ref = hybrid_recurrent(window=w, **a)
    head, tail = _split(a, T1)
    _, st = hybrid_chunked(window=w, chunk_size=8, return_state=True, **head)
    o, st2 = hybrid_chunked_continue(st, window=w, chunk_size=8, **tail)
    assert rel_err(o, rec[:, :, T1:]) < TOL[dtype]
    assert st2["n"] == st_ref["n"] == T1 + T2
    for name in ("S", "k", "v", "fk", "valid") + (("g",) if gated else ()):
        assert torch.equal(st2[name], st_ref[name]) if name == "valid" else rel_err(st2[name], st_ref[name]) < TOL[dtype], name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T", [1, 19, 33])
def test_gsa_forms_agree(dtype, T):
    gen = torch.Generator().manual_seed(300 + T)
    B, H, D, m = 2, 3, 8, 5
    q, k, v = (torch.randn(B, H, T, D, generator=gen, dtype=dtype) for _ in range(3))
    g = -torch.rand(B, H, T, m, generator=gen, dtype=dtype)
    valid = padding(B, T, gen)
    g = g * valid[:, None, :, None].to(dtype)
    ref, s_ref = gsa_parallel(q, k, v, g, D ** -0.5)
    for fn, kw in ((gsa_chunked, {"chunk_size": 8}), (gsa_recurrent, {})):
        o, s = fn(q, k, v, g, D ** -0.5, **kw)
        assert rel_err(o, ref) < TOL[dtype]
        assert rel_err(s["Sv"], s_ref["Sv"]) < TOL[dtype]


@pytest.mark.parametrize("method", ["hedgehog", "lizard", "gsa"])
def test_gradients_parallel_equal_chunked(method):
    gen = torch.Generator().manual_seed(7)
    dtype = torch.float64
    if method == "gsa":
        B, H, T, D, m = 2, 2, 21, 6, 4
        leaves = [torch.randn(B, H, T, D, generator=gen, dtype=dtype) for _ in range(3)]
        leaves.append(-torch.rand(B, H, T, m, generator=gen, dtype=dtype))
        run = {"parallel": lambda q, k, v, g: gsa_parallel(q, k, v, g, 0.4)[0],
               "chunked": lambda q, k, v, g: gsa_chunked(q, k, v, g, 0.4, chunk_size=8)[0]}
    else:
        a = hybrid_inputs(2, 2, 21, 6, 4, 2 if method == "lizard" else 0, dtype, method == "lizard", gen)
        names = [n for n in ("q", "k", "v", "fq", "fk", "g", "mix", "meta_k", "meta_v") if a[n] is not None]
        leaves = [a[n] for n in names]
        def call(fn, **kw):
            return lambda *xs: fn(window=4, **{**a, **dict(zip(names, xs))}, **kw)
        run = {"parallel": call(hybrid_parallel), "chunked": call(hybrid_chunked, chunk_size=8)}
    w = torch.randn(*run["parallel"](*leaves).shape, generator=gen, dtype=dtype)
    grads = {}
    for form, f in run.items():
        xs = [x.clone().requires_grad_(True) for x in leaves]
        (f(*xs) * w).sum().backward()
        grads[form] = [x.grad for x in xs]
    valid = None if method == "gsa" else a["valid"]
    for gp, gc in zip(grads["parallel"], grads["chunked"]):
        if valid is not None and gp.dim() == 4:
            # padded steps reach the core already zeroed (the module multiplies them by 0), so
            # only gradients at real tokens are part of the function both forms compute
            keep = valid[:, None, :, None].to(gp.dtype)
            gp, gc = gp * keep, gc * keep
        assert rel_err(gc, gp) < 1e-8


def test_long_gated_decode_has_no_drift():
    """2,000 gated steps: the float64 cumsum keeps the chunked form equal to the step loop."""
    gen = torch.Generator().manual_seed(11)
    a = hybrid_inputs(1, 2, 2000, 8, 6, 2, torch.float32, True, gen, padded=False)
    a["g"] = -torch.rand(1, 2, 2000, 6, generator=gen) * 0.05  # slow decay: long memories stay
    rec, _ = hybrid_recurrent(window=16, **a)
    chunked = hybrid_chunked(window=16, chunk_size=64, **a)
    assert torch.isfinite(rec).all()
    assert rel_err(chunked, rec) < 1e-4


def test_window_gate_sums_stay_precise_over_long_sequences():
    """The in-window decay of a key is a sum of w gates; float32 block-local prefix sums keep it
    exact to ~1e-6 at 100K steps, where a float32 global cumsum would have lost it."""
    from linearize.attention.hybrid import window_sums

    gen = torch.Generator().manual_seed(5)
    for T, w in ((1, 4), (37, 5), (64, 64), (100_000, 64)):
        g = -torch.rand(1, 2, T, 3, generator=gen)
        G = torch.nn.functional.pad(g.double().cumsum(2), (0, 0, 1, 0))
        idx = torch.arange(1, T + 1)
        want = G[:, :, idx] - G[:, :, (idx - w).clamp(min=0)]
        got = window_sums(g, w)
        assert got.dtype == torch.float32
        assert (got.double() - want).abs().max() < 1e-4 * w


def test_fused_glue_runs_plain_code_off_the_gpu(monkeypatch):
    """fused() compiles only for large CUDA inputs: on CPU the reference function runs as is (the
    forms tested above are the code users get on CPU), and its .reference is that function."""
    from linearize.attention import fusion
    from linearize.attention.hybrid import combine

    def boom(*a, **k):
        raise AssertionError("torch.compile must not run for CPU inputs")

    monkeypatch.setattr(torch, "compile", boom)
    g = torch.Generator().manual_seed(0)
    num, den = torch.rand(2, 3, 5, 4, generator=g), torch.rand(2, 3, 5, generator=g) + 0.1
    out = combine(num, den, num * 2, den * 2, torch.zeros(3))
    assert torch.allclose(out, combine.reference(num, den, num * 2, den * 2, torch.zeros(3)))
    assert torch.allclose(out, num / den[..., None])  # same ratio in both halves: the mix cancels
    assert not fusion._big_cuda((num,), {})


def test_fused_glue_compiles_once_per_mode(monkeypatch):
    """Where it compiles (large CUDA inputs, faked here), fused() keeps one compiled version for
    training (dynamic=None: static kernels for the fixed batch) and one for inference
    (dynamic=True at once: scoring changes width every few batches, and a static first compile
    would be paid twice)."""
    from linearize.attention import fusion

    calls = []

    def fake_compile(fn, dynamic):
        calls.append(dynamic)
        return lambda *a, **k: fn(*a, **k) + 1  # marks that the compiled version ran

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(fusion, "_big_cuda", lambda args, kwargs: True)
    f = fusion.fused(lambda x: x * 2)
    x = torch.randn(3)
    assert torch.equal(f(x), x * 2 + 1) and torch.equal(f(x), x * 2 + 1)
    with torch.no_grad():
        assert torch.equal(f(x), x * 2 + 1) and torch.equal(f(x), x * 2 + 1)
    assert calls == [None, True]
    monkeypatch.setenv("LINEARIZE_COMPILE", "0")
    assert torch.equal(f(x), x * 2)
