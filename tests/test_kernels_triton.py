"""The Triton kernels against the PyTorch references, on CPU through Triton's interpreter.

TRITON_INTERPRET=1 is set before triton is imported. The interpreter has no bf16 tl.dot, so
everything here is fp32 (the GPU run in benchmarks/ checks bf16). Fresh random inputs (never
zeros), odd lengths, batch > 1, GQA-expanded heads (kv heads repeated to query heads).

Tolerances: fp32 kernels vs fp32 references, 2e-4 relative-to-max (outputs and gradients); the
kernels reassociate sums (chunked state, exp(-G) rescaling), which costs a few ulps times the
in-chunk decay range.
"""
import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

triton = pytest.importorskip("triton")

from linearize.attention import gated_slots, gla, hybrid  # noqa: E402
from linearize.attention.base import repeat_kv  # noqa: E402
from linearize.kernels import chunk, decode, fused_chunk  # noqa: E402

TOL = 2e-4


def close(a, b, tol=TOL, what=""):
    a, b = a.double(), b.double()
    err = (a - b).abs().max().item()
    scale = max(b.abs().max().item(), 1e-6)
    assert err <= tol * scale, f"{what}: max err {err:.3e} vs scale {scale:.3e}"


def gqa(B, Hkv, rep, T, D, gen):
    return repeat_kv(torch.randn(B, Hkv, T, D, generator=gen), rep)


def gate(shape, gen, gmax=1.0):
    return -gmax * torch.sigmoid(torch.randn(*shape, generator=gen))


# ------------------------------------------------------------------------------- chunked GLA

@pytest.mark.parametrize("T,K,V,which,h0", [
    (37, 16, 24, "gk", False),
    (53, 32, 17, "gv", True),
    (41, 16, 16, "none", False),
    (70, 24, 33, "both", True),
    (40, 80, 65, "gk", True),  # two key blocks (their partial sums added atomically), V + 1 = 65 wide values
    (45, 24, 129, "none", False),  # the stored kernels' tail column (V = 2 * 64 + 1) behind two full blocks
    (29, 128, 65, "gk", True),  # the hybrids' shape: 128 keys (two walk row blocks), tail column, reload
])
@pytest.mark.parametrize("kernels", ["fused", "stored"])
def test_chunk_gla_forward_backward(T, K, V, which, h0, kernels):
    """Both kernel sets: fused_chunk (the state walked in registers; no value gate) and chunk.py's
    stored-state kernels, through gla_chunked_triton's choice and directly."""
    if kernels == "fused" and which in ("gv", "both"):
        pytest.skip("the fused walk has no value gate (gla_chunked_triton sends those to the stored kernels)")
    if kernels == "fused" and V > fused_chunk.MAX_V:
        pytest.skip("the fused walk keeps values at most MAX_V wide")
    gen = torch.Generator().manual_seed(T * 7 + K)
    B, Hkv, rep = 2, 1, 2
    H = Hkv * rep
    q = torch.randn(B, H, T, K, generator=gen)
    k = gqa(B, Hkv, rep, T, K, gen)
    v = gqa(B, Hkv, rep, T, V, gen)
    gk = gate((B, H, T, K), gen) if which in ("gk", "both") else None
    gv = gate((B, H, T, V), gen) if which in ("gv", "both") else None
    s0 = torch.randn(B, H, K, V, generator=gen) if h0 else None
    leaves = [x for x in (q, k, v, gk, gv, s0) if x is not None]
    for x in leaves:
        x.requires_grad_(True)
    do = torch.randn(B, H, T, V, generator=gen)
    dS = torch.randn(B, H, K, V, generator=gen)

    o_ref, S_ref = gla.gla_parallel(q, k, v, gk, gv, s0)
    g_ref = torch.autograd.grad((o_ref * do).sum() + (S_ref * dS).sum(), leaves)
    run = (lambda: fused_chunk.gla_fused_chunk(q, k, v, gk, s0, chunk_size=16)) if kernels == "fused" else \
        (lambda: chunk.gla_chunked_stored(q, k, v, gk, gv, s0, 16))
    o, S = run()
    g = torch.autograd.grad((o * do).sum() + (S * dS).sum(), leaves)
    close(o, o_ref, what="o")
    close(S, S_ref, what="state")
    for name, a, b in zip(("dq", "dk", "dv", "dg", "dg2", "ds0"), g, g_ref):
        close(a, b, tol=5e-4, what=name)


@pytest.mark.parametrize("knobs", [
    dict(STATE_BK=16, DQKV_RELOAD=True),  # the smallest walk programs; q, k reloaded after the value loop
    dict(WALK_BV=64, O_BV=64, DQKV_BV=64, DQKV_RELOAD=False),  # value blocks of 64: the tail column in walk and fwd_o
])
def test_chunk_gla_stored_launch_rules(knobs, monkeypatch):
    """The launch parameters chunk.py's rules pick on the GPU but not for these small grids (the
    interpreter counts 4 SMs), each set against the reference: 128 keys, the hybrids' V = 65 and
    K = V = 128, key gate, initial state and final-state gradient."""
    for name, val in knobs.items():
        monkeypatch.setattr(chunk, name, val)
    gen = torch.Generator().manual_seed(13)
    for T, K, V in ((45, 128, 65), (37, 128, 128)):
        q, k, v = (torch.randn(2, 2, T, d, generator=gen) for d in (K, K, V))
        gk = gate((2, 2, T, K), gen)
        s0 = torch.randn(2, 2, K, V, generator=gen)
        leaves = [q, k, v, gk, s0]
        for x in leaves:
            x.requires_grad_(True)
        do, dS = torch.randn(2, 2, T, V, generator=gen), torch.randn(2, 2, K, V, generator=gen)
        o_ref, S_ref = gla.gla_parallel(q, k, v, gk, None, s0)
        g_ref = torch.autograd.grad((o_ref * do).sum() + (S_ref * dS).sum(), leaves)
        o, S = chunk.gla_chunked_stored(q, k, v, gk, None, s0, 16)
        grads = torch.autograd.grad((o * do).sum() + (S * dS).sum(), leaves)
        close(o, o_ref, what=f"o {T, K, V}")
        close(S, S_ref, what=f"state {T, K, V}")
        for name, a, b in zip(("dq", "dk", "dv", "dg", "ds0"), grads, g_ref):
            close(a, b, tol=5e-4, what=f"{name} {T, K, V}")


@pytest.mark.parametrize("which", ["gk", "none", "both"])
def test_chunk_gla_stored_without_value_grad(which):
    """Values that need no gradient (stage 1: frozen v_proj on detached inputs): the stored-state
    backward skips dv (unless a value gate needs it) and returns the other gradients unchanged."""
    gen = torch.Generator().manual_seed(11)
    B, H, T, K, V = 2, 3, 45, 24, 33
    q, k = torch.randn(B, H, T, K, generator=gen), torch.randn(B, H, T, K, generator=gen)
    v = torch.randn(B, H, T, V, generator=gen)
    gk = gate((B, H, T, K), gen) if which != "none" else None
    gv = gate((B, H, T, V), gen) if which == "both" else None
    leaves = [x for x in (q, k, gk, gv) if x is not None]
    for x in leaves:
        x.requires_grad_(True)
    do = torch.randn(B, H, T, V, generator=gen)
    o_ref, _ = gla.gla_parallel(q, k, v, gk, gv, None)
    g_ref = torch.autograd.grad((o_ref * do).sum(), leaves)
    o, _ = chunk.gla_chunked_stored(q, k, v, gk, gv, None, 16)
    g = torch.autograd.grad((o * do).sum(), leaves)
    close(o, o_ref, what="o")
    for a, b in zip(g, g_ref):
        close(a, b, tol=5e-4, what="grad")


@pytest.mark.parametrize("which", ["gk", "both"])
def test_chunk_gla_key_groups(which, monkeypatch):
    """Keys wider than chunk.MAX_KEY_GROUP (128; 16 here, so 40 keys make groups of 16, 16 and 8) run
    as separate GLAs whose outputs add up and whose states stack: equal to the one-piece reference,
    gradients included, with both gates and an initial state."""
    monkeypatch.setattr(chunk, "MAX_KEY_GROUP", 16)
    gen = torch.Generator().manual_seed(5)
    B, H, T, K, V = 2, 2, 37, 40, 17
    q, k, v = (torch.randn(B, H, T, d, generator=gen) for d in (K, K, V))
    gk = gate((B, H, T, K), gen)
    gv = gate((B, H, T, V), gen) if which == "both" else None
    s0 = torch.randn(B, H, K, V, generator=gen)
    leaves = [x for x in (q, k, v, gk, gv, s0) if x is not None]
    for x in leaves:
        x.requires_grad_(True)
    do, dS = torch.randn(B, H, T, V, generator=gen), torch.randn(B, H, K, V, generator=gen)
    o_ref, S_ref = gla.gla_parallel(q, k, v, gk, gv, s0)
    g_ref = torch.autograd.grad((o_ref * do).sum() + (S_ref * dS).sum(), leaves)
    o, S = chunk.gla_chunked_triton(q, k, v, gk, gv, s0, chunk_size=16)
    grads = torch.autograd.grad((o * do).sum() + (S * dS).sum(), leaves)
    close(o, o_ref, what="o")
    close(S, S_ref, what="state")
    for a, b in zip(grads, g_ref):
        close(a, b, tol=5e-4, what="grad")


@pytest.mark.parametrize("T,K,V,gated,h0,v_grad", [(37, 16, 24, True, True, True), (40, 80, 16, True, False, True),
                                                    (41, 16, 16, False, True, True), (40, 80, 16, True, True, False),
                                                    (37, 16, 24, True, False, False),
                                                    (29, 128, 64, True, True, True),  # the hybrids' shape (stored kernels)
                                                    (45, 128, 64, True, False, False)])
@pytest.mark.parametrize("kernels", ["fused", "stored"])
def test_normalizer_column(T, K, V, gated, h0, v_grad, kernels):
    """normalizer=True (fused_chunk's walk, and chunk.py's stored-state kernels) equals GLA over v with
    a ones column appended (the hybrids' normaliser), the state's extra column and its gradients
    included; with v_grad False (stage 1's frozen values) the backward skips dv and the other
    gradients are unchanged."""
    if kernels == "fused" and K > 80:
        pytest.skip("the fused walk's shapes are covered by the smaller keys")
    gen = torch.Generator().manual_seed(T + K)
    B, H = 2, 3
    q, k = torch.randn(B, H, T, K, generator=gen), torch.randn(B, H, T, K, generator=gen)
    v = torch.randn(B, H, T, V, generator=gen)
    g = gate((B, H, T, K), gen) if gated else None
    s0 = torch.randn(B, H, K, V + 1, generator=gen) if h0 else None
    leaves = [x for x in (q, k, v, g, s0) if x is not None and (v_grad or x is not v)]
    for x in leaves:
        x.requires_grad_(True)
    do, dS = torch.randn(B, H, T, V + 1, generator=gen), torch.randn(B, H, K, V + 1, generator=gen)
    o_ref, S_ref = gla.gla_parallel(q, k, torch.cat([v, torch.ones_like(v[..., :1])], -1), g, None, s0)
    g_ref = torch.autograd.grad((o_ref * do).sum() + (S_ref * dS).sum(), leaves)
    if kernels == "fused":
        o, S = fused_chunk.gla_fused_chunk(q, k, v, g, s0, chunk_size=16, normalizer=True)
    else:
        o, den, S = chunk.gla_chunked_stored(q, k, v, g, None, s0, 16, normalizer=True)
        o = torch.cat([o, den[..., None]], -1)
    grads = torch.autograd.grad((o * do).sum() + (S * dS).sum(), leaves)
    close(o, o_ref, what="o")
    close(S, S_ref, what="state")
    for a, b in zip(grads, g_ref):
        close(a, b, tol=5e-4, what="grad")


def hybrid_inputs(B, H, rep, T, D, F, W, gated, meta, gen, valid=False):
    q = torch.randn(B, H, T, D, generator=gen)
    k = gqa(B, H // rep, rep, T, D, gen)
    v = gqa(B, H // rep, rep, T, D, gen)
    fq = torch.softmax(torch.randn(B, H, T, F, generator=gen), -1)
    fk = torch.softmax(repeat_kv(torch.randn(B, H // rep, T, F, generator=gen), rep), -1)
    g = gate((B, H, T, F), gen) if gated else None
    mix = torch.randn(H, generator=gen)
    vmask = None
    if valid:
        vmask = torch.ones(B, T, dtype=torch.bool)
        vmask[0, :3] = False  # left padding on the first row
        keep = vmask[:, None, :, None]
        fk, v = fk * keep, v * keep
        g = None if g is None else g * keep
    mk = torch.randn(H, 3, D, generator=gen) * 0.5 if meta else None
    mv = torch.randn(H, 3, D, generator=gen) if meta else None
    return dict(q=q, k=k, v=v, fq=fq, fk=fk, g=g, mix=mix, scale=D ** -0.5, valid=vmask, meta_k=mk, meta_v=mv)


@pytest.mark.parametrize("gated,meta", [(False, False), (True, True)])
@pytest.mark.parametrize("kernels", ["fused", "stored"])
def test_hybrid_chunked_forward_backward(gated, meta, kernels, monkeypatch):
    """The hybrid's linear half through the fused walk (normaliser column added in the kernel) and
    through the stored-state kernels (ones column in the values)."""
    monkeypatch.setattr(chunk, "GLA_KERNELS", kernels)
    gen = torch.Generator().manual_seed(11 + gated)
    B, H, rep, T, D, F, W = 2, 4, 2, 45, 16, 16, 5
    a = hybrid_inputs(B, H, rep, T, D, F, W, gated, meta, gen)
    leaves = [a[n] for n in ("q", "k", "v", "fq", "fk", "g", "mix") if a[n] is not None]
    for x in leaves:
        x.requires_grad_(True)
    do = torch.randn(B, H, T, D, generator=gen)
    o_ref = hybrid.hybrid_parallel(window=W, **a)
    g_ref = torch.autograd.grad((o_ref * do).sum(), leaves)
    o, st = chunk.hybrid_chunked_triton(window=W, chunk_size=16, return_state=True, **a)
    g = torch.autograd.grad((o * do).sum(), leaves)
    close(o, o_ref, what="o")
    for a_, b_ in zip(g, g_ref):
        close(a_, b_, tol=5e-4, what="grad")
    _, st_ref = hybrid.hybrid_chunked(window=W, chunk_size=16, return_state=True, **a)
    close(st["S"], st_ref["S"], what="S")


@pytest.mark.parametrize("T,F,V,W,gated,ones", [
    (45, 24, 17, 5, True, True),    # odd sizes; the window's first rows; several row blocks
    (70, 40, 16, 16, True, False),  # w = the row block: the carry is the whole lagged tile
    (9, 16, 8, 12, True, True),     # T < w: nothing enters the linear state
    (33, 16, 16, 7, False, True),   # Hedgehog: no gate, plain shifts
])
def test_lagged_keys_kernel(T, F, V, W, gated, ones):
    """kernels/lagged_keys.py against hybrid.lagged_keys: k'_t = fk_{t-w} exp(sum of the window's gates),
    v'_t = [v_{t-w}, 1]; gates strong enough (down to -3 a step) that a wrong window sum shows. The
    gate is read through its strides: the odd-T cases pass it as the gate module gives it, a
    heads-first view of [B, T, H, F]."""
    from linearize.kernels.lagged_keys import lagged_keys_triton

    gen = torch.Generator().manual_seed(T + W)
    B, H = 2, 3
    fk = torch.rand(B, H, T, F, generator=gen) + 0.1
    v = torch.randn(B, H, T, V, generator=gen)
    g = gate((B, H, T, F), gen, gmax=3.0) if gated else None
    if gated and T % 2:
        g = g.transpose(1, 2).contiguous().transpose(1, 2)
        assert not g.is_contiguous()
    kk_ref, vv_ref = hybrid.lagged_keys(fk, v, g, W, ones=ones)
    kk, vv = lagged_keys_triton(fk, v, g, W, ones=ones)
    assert kk.shape == kk_ref.shape and vv.shape == vv_ref.shape
    close(kk, kk_ref, tol=1e-5, what="k'")
    assert torch.equal(vv, vv_ref)


@pytest.mark.parametrize("T,F,W", [
    (45, 24, 5),    # odd sizes; several row blocks, each reaching into the next for dfk and dg
    (70, 40, 16),   # w = the row block
    (9, 16, 12),    # T < w: no gradient reaches fk or g
    (50, 16, 13),   # w not a power of two: row blocks of 16, w + block past T in the last ones
])
def test_lagged_keys_train_backward(T, F, W):
    """kernels/lagged_keys.py's training op (LaggedKeys) against autograd through hybrid.lagged_keys:
    k', v' and the gradients of fk, v and the gate (strong gates, a strided gate view as the gate
    module gives it, random upstream gradients on both outputs)."""
    from linearize.kernels.lagged_keys import lagged_keys_train

    gen = torch.Generator().manual_seed(T * 3 + W)
    B, H, V = 2, 3, 8
    fk = torch.rand(B, H, T, F, generator=gen) + 0.1
    v = torch.randn(B, H, T, V, generator=gen)
    g = gate((B, H, T, F), gen, gmax=3.0).transpose(1, 2).contiguous().transpose(1, 2)
    for x in (fk, v, g):
        x.requires_grad_(True)
    dk, dv = torch.randn(B, H, T, F, generator=gen), torch.randn(B, H, T, V + 1, generator=gen)
    kk_ref, vv_ref = hybrid.lagged_keys(fk, v, g, W)
    ref = torch.autograd.grad((kk_ref * dk).sum() + (vv_ref * dv).sum(), (fk, v, g))
    kk, vv = lagged_keys_train(fk, v, g, W)
    got = torch.autograd.grad((kk * dk).sum() + (vv * dv).sum(), (fk, v, g))
    close(kk, kk_ref, tol=1e-5, what="k'")
    assert torch.equal(vv, vv_ref)
    for name, a_, b_ in zip(("dfk", "dv", "dg"), got, ref):
        close(a_, b_, tol=1e-5, what=name)


@pytest.mark.parametrize("kernels", ["fused", "stored"])
def test_hybrid_chunked_no_grad_uses_lagged_kernel(kernels, monkeypatch):
    """Without autograd the hybrid takes its lagged keys from the Triton kernel; the output is the
    reference's."""
    from linearize.kernels import lagged_keys

    monkeypatch.setattr(chunk, "GLA_KERNELS", kernels)
    calls = []
    real = lagged_keys.lagged_keys_triton
    monkeypatch.setattr(lagged_keys, "lagged_keys_triton", lambda *a, **k: calls.append(1) or real(*a, **k))
    gen = torch.Generator().manual_seed(3)
    a = hybrid_inputs(2, 4, 2, 45, 16, 16, 5, True, True, gen)
    with torch.no_grad():
        o = chunk.hybrid_chunked_triton(window=5, chunk_size=16, **a)
    assert calls, "the no-grad path did not use the lagged-keys kernel"
    close(o, hybrid.hybrid_parallel(window=5, **a), what="o")


@pytest.mark.parametrize("T1,T2", [(3, 20), (22, 23)])
def test_hybrid_chunked_continue_triton(T1, T2):
    """The chunked continuation on the Triton window and GLA kernels equals its PyTorch reference
    (ring not full / full and unaligned, padding in the first part, GQA, meta tokens)."""
    gen = torch.Generator().manual_seed(13 + T1)
    B, H, rep, D, F, W = 2, 4, 2, 16, 16, 5
    a = hybrid_inputs(B, H, rep, T1 + T2, D, F, W, True, True, gen, valid=True)
    head = {n: (x[:, :, :T1] if torch.is_tensor(x) and x.dim() == 4 else x[:, :T1] if n == "valid" else x)
            for n, x in a.items()}
    tail = {n: (x[:, :, T1:] if torch.is_tensor(x) and x.dim() == 4 else x[:, T1:] if n == "valid" else x)
            for n, x in a.items()}
    _, st = hybrid.hybrid_chunked(window=W, chunk_size=16, return_state=True, **head)
    st2 = {n: (x.clone() if torch.is_tensor(x) else x) for n, x in st.items()}
    o_ref, s_ref = hybrid.hybrid_chunked_continue(st, window=W, chunk_size=16, **tail)
    o, s = chunk.hybrid_chunked_continue_triton(st2, window=W, chunk_size=16, **tail)
    close(o, o_ref, what="o")
    close(s["S"], s_ref["S"], what="S")
    assert s["n"] == s_ref["n"] == T1 + T2


def test_gsa_chunked_forward_backward():
    gen = torch.Generator().manual_seed(5)
    B, H, rep, T, D, m = 2, 4, 2, 39, 16, 16
    q = torch.randn(B, H, T, D, generator=gen)
    k = gqa(B, H // rep, rep, T, D, gen)
    v = gqa(B, H // rep, rep, T, D, gen)
    g = gate((B, H, T, m), gen)
    leaves = [q, k, v, g]
    for x in leaves:
        x.requires_grad_(True)
    do = torch.randn(B, H, T, D, generator=gen)
    o_ref, st_ref = gated_slots.gsa_parallel(q, k, v, g, D ** -0.5)
    g_ref = torch.autograd.grad((o_ref * do).sum(), leaves)
    o, st = chunk.gsa_chunked_triton(q, k, v, g, D ** -0.5, chunk_size=16)
    gr = torch.autograd.grad((o * do).sum(), leaves)
    close(o, o_ref, what="o")
    close(st["Sk"], st_ref["Sk"], what="Sk")
    close(st["Sv"], st_ref["Sv"], what="Sv")
    for a_, b_ in zip(gr, g_ref):
        close(a_, b_, tol=5e-4, what="grad")


# ------------------------------------------------------------------------------- decode steps

@pytest.mark.parametrize("variant", ["tile", "sliced", "sliced-wide"])
@pytest.mark.parametrize("gated,meta,valid,linear", [
    (False, False, False, True), (True, True, True, True), (True, False, False, False)])
def test_hybrid_step_kernel(gated, meta, valid, linear, variant, monkeypatch):
    """Every variant of the decode step against hybrid_step over T > W steps (evictions); "sliced"
    with slices of 8 of the 24 feature rows, so three programs per head plus the window's, and the
    combine kernel; "sliced-wide" also walks the 16 value columns in blocks of 8."""
    monkeypatch.setattr(decode, "SLICED_F", 8)
    if variant == "sliced-wide":
        monkeypatch.setattr(decode, "SLICED_MAX_V", 8)
    variant = variant.split("-")[0]
    gen = torch.Generator().manual_seed(3 + gated + 2 * meta)
    B, H, rep, T, D, F, W = 3, 4, 2, 13, 16, 24, 5
    a = hybrid_inputs(B, H, rep, T, D, F, W, gated, meta, gen, valid=valid)
    a["linear_enabled"] = linear
    st_ref = hybrid.init_state(B, H, D, D, F, W, gated, "cpu", torch.float32)
    st = hybrid.init_state(B, H, D, D, F, W, gated, "cpu", torch.float32)
    for t in range(T):  # T > W: evictions happen
        at = {n: (x if not torch.is_tensor(x) or n in ("mix", "meta_k", "meta_v") else
                  (x[:, t] if n == "valid" else x[:, :, t])) for n, x in a.items()}
        o_ref = hybrid.hybrid_step(st_ref, **at)
        o = decode.hybrid_step_triton(st, **at, variant=variant)
        close(o, o_ref, what=f"o step {t}")
    for name in ("k", "v", "fk", "S", "g"):
        if name in st_ref:
            close(st[name], st_ref[name], what=name)
    assert torch.equal(st["valid"], st_ref["valid"])
    assert st["n"] == st_ref["n"] == T and tuple(st["pos"].shape) == tuple(st["k"].shape[:2]) and bool((st["pos"] == T).all())


def test_hybrid_step_continues_chunked_prefill():
    gen = torch.Generator().manual_seed(21)
    B, H, rep, T, D, F, W = 2, 2, 1, 23, 16, 16, 6
    a = hybrid_inputs(B, H, rep, T + 3, D, F, W, True, True, gen)
    pre = {n: (x[:, :, :T] if torch.is_tensor(x) and x.dim() == 4 else x) for n, x in a.items()}
    o_full = hybrid.hybrid_parallel(window=W, **a)
    _, st = chunk.hybrid_chunked_triton(window=W, chunk_size=16, return_state=True, **pre)
    for t in range(T, T + 3):
        at = {n: (x[:, :, t] if torch.is_tensor(x) and x.dim() == 4 else x) for n, x in a.items()}
        close(decode.hybrid_step_triton(st, **at), o_full[:, :, t], what=f"step {t}")


def test_gsa_step_kernel():
    gen = torch.Generator().manual_seed(9)
    B, H, rep, T, D, m = 3, 4, 2, 11, 16, 24
    q = torch.randn(B, H, T, D, generator=gen)
    k = gqa(B, H // rep, rep, T, D, gen)
    v = gqa(B, H // rep, rep, T, D, gen)
    g = gate((B, H, T, m), gen)
    st_ref = gated_slots.init_state(B, H, D, D, m, "cpu", torch.float32)
    st = gated_slots.init_state(B, H, D, D, m, "cpu", torch.float32)
    for t in range(T):
        o_ref = gated_slots.gsa_step(st_ref, q[:, :, t], k[:, :, t], v[:, :, t], g[:, :, t], D ** -0.5)
        o = decode.gsa_step_triton(st, q[:, :, t], k[:, :, t], v[:, :, t], g[:, :, t], D ** -0.5)
        close(o, o_ref, what=f"o step {t}")
    close(st["Sk"], st_ref["Sk"], what="Sk")
    close(st["Sv"], st_ref["Sv"], what="Sv")
    assert st["n"] == T


def test_dispatch_registration_cpu_keeps_reference():
    from linearize.attention import dispatch
    from linearize.kernels import register_all

    assert register_all()
    assert decode.hybrid_step_triton in dispatch.registered("hybrid", "step")
    x = torch.randn(1, 1, 4)
    assert dispatch.lookup("hybrid", "step", hybrid.hybrid_step, q=x, k=x, v=x, fq=x, fk=x) is hybrid.hybrid_step


# ------------------------------------------------------------------ long decode, bf16 vs fp64

def _long_decode(step_fn, steps, device):
    """Lizard-shaped decode: bf16 inputs, fp32 state, compared with an fp64 reference state."""
    gen = torch.Generator().manual_seed(1)
    B, H, D, F, W = 2, 2, 16, 16, 8
    st = hybrid.init_state(B, H, D, D, F, W, True, device, torch.bfloat16)
    st64 = hybrid.init_state(B, H, D, D, F, W, True, "cpu", torch.float64)
    mix = torch.randn(H, generator=gen)
    mk, mv = torch.randn(H, 2, D, generator=gen), torch.randn(H, 2, D, generator=gen)
    worst = 0.0
    for t in range(steps):
        x = [torch.randn(B, H, D, generator=gen) for _ in range(3)]
        fq, fk = (torch.softmax(torch.randn(B, H, F, generator=gen), -1) for _ in range(2))
        g = -0.05 * torch.sigmoid(torch.randn(B, H, F, generator=gen))  # long memory
        args = [a.bfloat16() for a in (*x, fq, fk)]  # the same bf16-rounded inputs for both
        o64 = hybrid.hybrid_step(st64, *[a.double() for a in args], g.double(), mix.double(), D ** -0.5,
                                 None, mk.double(), mv.double())
        o = step_fn(st, *[a.to(device) for a in args], g.to(device), mix.to(device), D ** -0.5, None,
                    mk.bfloat16().to(device), mv.bfloat16().to(device))
        if t % 97 == 0 or t == steps - 1:
            err = (o.double().cpu() - o64).abs().max().item() / o64.abs().max().item()
            worst = max(worst, err)
    s_err = (st["S"].double().cpu() - st64["S"]).abs().max().item() / st64["S"].abs().max().item()
    return worst, s_err


@pytest.mark.slow
def test_long_decode_bf16_inputs_fp32_state_pytorch_step():
    """10K steps (15 s alone, 2+ min after the interpreted tests on this box) of the PyTorch step (the interpreter is too slow for 10K kernel launches): bf16
    inputs, fp32 state vs an fp64 state; outputs within 2e-2 (bf16 output rounding), state 1e-4."""
    worst, s_err = _long_decode(hybrid.hybrid_step, 10_000, "cpu")
    assert worst < 2e-2 and s_err < 1e-4, (worst, s_err)


def test_long_decode_kernel_interpreted_short():
    """The same with the Triton step under the interpreter, 150 steps (bf16 loads, fp32 math)."""
    worst, s_err = _long_decode(decode.hybrid_step_triton, 150, "cpu")
    assert worst < 2e-2 and s_err < 1e-4, (worst, s_err)


@pytest.mark.parametrize("B,T,H,Hkv,D,cos_batch", [(2, 37, 4, 2, 16, 1), (3, 70, 3, 1, 24, 3)])
def test_rope_head_major_kernel(B, T, H, Hkv, D, cos_batch):
    """kernels/rope.py against base.rope_head_major: q, k read from the projections' [B, T, H*D]
    layout (strided views), rotated, written heads-first and contiguous; cos / sin shared over the
    batch or per row; odd lengths, a head dim whose half is not a power of two."""
    from linearize.attention.base import rope_head_major
    from linearize.kernels.rope import rope_head_major_triton

    gen = torch.Generator().manual_seed(T)
    q = torch.randn(B, T, H * D, generator=gen).view(B, T, H, D)
    k = torch.randn(B, T, Hkv * D, generator=gen).view(B, T, Hkv, D)
    ang = torch.rand(cos_batch, T, D // 2, generator=gen) * 6
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    q_ref, k_ref = rope_head_major(q, k, cos, sin)
    q2, k2 = rope_head_major_triton(q, k, cos, sin)
    assert q2.shape == (B, H, T, D) and k2.shape == (B, Hkv, T, D) and q2.is_contiguous()
    close(q2, q_ref, tol=1e-6, what="q")
    close(k2, k_ref, tol=1e-6, what="k")


@pytest.mark.parametrize("B,T,H,Hkv,D,cos_batch", [(2, 37, 4, 2, 16, 1), (3, 70, 3, 1, 24, 3)])
def test_rope_head_major_backward(B, T, H, Hkv, D, cos_batch):
    """RopeHeadMajor's gradients (the transposed rotation, written back in the projections' layout)
    against autograd through base.rope_head_major, with random upstream gradients that arrive both
    contiguous and as a strided view; and with k outside autograd, q's gradient alone."""
    from linearize.attention.base import rope_head_major
    from linearize.kernels.rope import rope_head_major_triton

    gen = torch.Generator().manual_seed(T + 1)
    qf = torch.randn(B, T, H * D, generator=gen).requires_grad_()
    kf = torch.randn(B, T, Hkv * D, generator=gen).requires_grad_()
    ang = torch.rand(cos_batch, T, D // 2, generator=gen) * 6
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    dq = torch.randn(B, H, T, D, generator=gen)
    dk = torch.randn(B, T, Hkv, D, generator=gen).transpose(1, 2)  # strided upstream gradient
    grads = []
    for fn in (rope_head_major, rope_head_major_triton):
        q2, k2 = fn(qf.view(B, T, H, D), kf.view(B, T, Hkv, D), cos, sin)
        grads.append(torch.autograd.grad((q2 * dq).sum() + (k2 * dk).sum(), (qf, kf)))
    close(grads[1][0], grads[0][0], tol=1e-5, what="dq")
    close(grads[1][1], grads[0][1], tol=1e-5, what="dk")
    kc = kf.detach()  # k without autograd: only q's gradient is asked for
    q2, k2 = rope_head_major_triton(qf.view(B, T, H, D), kc.view(B, T, Hkv, D), cos, sin)
    (g,) = torch.autograd.grad((q2 * dq).sum(), (qf,))
    close(g, grads[0][0], tol=1e-5, what="dq, k without grad")


@pytest.mark.parametrize("B,H,T,D,F,strided", [(2, 3, 37, 16, 16, False), (3, 2, 70, 24, 20, True), (2, 2, 1, 16, 16, False)])
def test_hedgehog_features_kernel(B, H, T, D, F, strided):
    """kernels/feature_map.py against feature_maps.hedgehog_features: a random (not identity) map and
    bias, odd lengths, a decode step (T = 1), feature and head dims that are not powers of two, and x
    as the strided heads-first view of a [B, T, H, D] tensor."""
    from linearize.attention.feature_maps import hedgehog_features
    from linearize.kernels.feature_map import hedgehog_features_triton

    gen = torch.Generator().manual_seed(T + F)
    x = torch.randn(B, T, H, D, generator=gen).transpose(1, 2) if strided else torch.randn(B, H, T, D, generator=gen)
    w = torch.randn(H, D, F, generator=gen) / D ** 0.5 * 2
    b = torch.randn(H, F, generator=gen)
    ref = hedgehog_features.reference(x, w, b)
    out = hedgehog_features_triton(x, w, b)
    assert out.shape == (B, H, T, 2 * F) and out.is_contiguous()
    close(out, ref, tol=1e-5, what="features")


def test_hedgehog_features_dispatch():
    """The kernel serves only forward passes with no autograd through the map (CUDA in practice;
    the predicate is what decides)."""
    from linearize.kernels import feature_map

    x = torch.randn(1, 2, 5, 16)
    w = torch.randn(2, 16, 16, requires_grad=True)
    b = torch.zeros(2, 16)
    assert not feature_map.supports(x, w, b)  # CPU tensors
    cuda_like = type("T", (), {})  # the predicate's other conditions, on a stand-in for a CUDA tensor
    fake = cuda_like()
    fake.is_cuda, fake.requires_grad = True, False
    fake.dim, fake.stride = (lambda: 4), (lambda i: 1)
    assert not feature_map.supports(fake, w, b)  # autograd through the weight
    with torch.no_grad():
        assert feature_map.supports(fake, w, b)


@pytest.mark.parametrize("shape,dtype,wdtype,strided", [
    ((2, 37, 24), torch.float32, torch.float32, False),
    ((3, 5, 576), torch.float32, torch.float32, True),
    ((1, 1, 40), torch.bfloat16, torch.bfloat16, False),
    ((4, 9, 48), torch.bfloat16, torch.float32, False),
])
def test_rmsnorm_kernel(shape, dtype, wdtype, strided):
    """kernels/rmsnorm.py against linearize.rmsnorm.rms_norm: odd row counts, a hidden size that is
    not a power of two (SmolLM2's 576), rows strided in memory, a single row (decode), bf16 input
    with a bf16 or fp32 weight (the output dtype promotes as HF's does). fp32 1e-5; bf16 one
    rounding step (2^-7 relative), since the two may round the normalised x on either side."""
    from linearize.kernels.rmsnorm import rms_norm_triton
    from linearize.rmsnorm import rms_norm

    gen = torch.Generator().manual_seed(shape[-1])
    if strided:  # a unit last stride with a row stride above N: a column slice of a wider tensor
        x = (torch.randn(*shape[:-1], shape[-1] + 7, generator=gen) * 3).to(dtype)[..., 3:3 + shape[-1]]
    else:
        x = (torch.randn(*shape, generator=gen) * 3).to(dtype)
    w = (torch.randn(shape[-1], generator=gen) * 0.5 + 1).to(wdtype)
    ref = rms_norm(x, w, 1e-5)
    out = rms_norm_triton(x, w, 1e-5)
    assert out.shape == ref.shape and out.dtype == ref.dtype and out.is_contiguous()
    close(out, ref, tol=1e-5 if dtype == torch.float32 else 2 ** -7, what="rmsnorm")


@pytest.mark.parametrize("shape,dtype,wdtype,strided,w_grad", [
    ((2, 37, 24), torch.float32, torch.float32, False, True),
    ((3, 5, 576), torch.float32, torch.float32, True, True),
    ((4, 9, 48), torch.bfloat16, torch.bfloat16, False, False),
    ((4, 9, 48), torch.bfloat16, torch.float32, False, True),
])
def test_rmsnorm_backward(shape, dtype, wdtype, strided, w_grad):
    """RMSNormFunction's dx and dw against autograd through linearize.rmsnorm.rms_norm: odd row
    counts, SmolLM2's 576, strided rows, a frozen weight (no dw computed). fp32 1e-5; bf16 inputs
    2^-6 relative to the largest gradient (the reference rounds its intermediates to bf16, the
    kernel computes in fp32 and rounds once)."""
    from linearize.kernels.rmsnorm import rms_norm_triton
    from linearize.rmsnorm import rms_norm

    gen = torch.Generator().manual_seed(shape[-1] + 1)
    if strided:
        base = (torch.randn(*shape[:-1], shape[-1] + 7, generator=gen) * 3).to(dtype).requires_grad_()
        x = base[..., 3:3 + shape[-1]]
        leaf = base
    else:
        leaf = x = (torch.randn(*shape, generator=gen) * 3).to(dtype).requires_grad_()
    w = (torch.randn(shape[-1], generator=gen) * 0.5 + 1).to(wdtype).requires_grad_(w_grad)
    dy = torch.randn(*shape, generator=gen).to(torch.promote_types(dtype, wdtype))
    wanted = (leaf, w) if w_grad else (leaf,)
    ref = torch.autograd.grad((rms_norm(x, w, 1e-5).float() * dy.float()).sum(), wanted)
    out = torch.autograd.grad((rms_norm_triton(x, w, 1e-5).float() * dy.float()).sum(), wanted)
    tol = 1e-5 if dtype == torch.float32 else 2 ** -6
    close(out[0], ref[0], tol=tol, what="dx")
    if w_grad:
        close(out[1], ref[1], tol=tol, what="dw")


@pytest.mark.parametrize("n,V,BV", [(7, 37, None), (5, 300, 64), (3, 4096 + 5, None)])
def test_softmax_grad_kernel(n, V, BV, monkeypatch):
    """kernels/cross_entropy.py against lm_loss.softmax_grad_rows: the rows overwritten with
    softmax - onehot and the per-row loss, ignored targets (zero rows, zero loss), targets at both
    ends of the vocabulary, rows strided in memory, V not a multiple of the block (one block, several
    blocks with a ragged tail). fp32, 1e-5 relative to the largest entry."""
    from linearize.data import IGNORE_INDEX
    from linearize.kernels import cross_entropy
    from linearize.lm_loss import softmax_grad_rows

    gen = torch.Generator().manual_seed(n * V)
    base = torch.randn(n, V + 3, generator=gen) * 4
    t = torch.randint(0, V, (n,), generator=gen)
    t[0], t[-1] = 0, V - 1
    t[1] = IGNORE_INDEX
    if BV is not None:  # several blocks per row at a small width
        real = cross_entropy._softmax_grad_kernel

        class Small:
            def __getitem__(self, grid):
                return lambda *a, **kw: real[grid](*a, **{**kw, "BV": BV})
        monkeypatch.setattr(cross_entropy, "_softmax_grad_kernel", Small())
    ref_x = base[:, :V].clone()
    ref_loss = softmax_grad_rows(ref_x, t)
    x = base.clone()[:, :V]  # row stride V + 3
    loss = cross_entropy.softmax_grad_rows_triton(x, t)
    close(loss, ref_loss, tol=1e-5, what="loss")
    close(x, ref_x, tol=1e-5, what="gradient rows")
    assert loss[1].item() == 0 and x[1].abs().max().item() == 0
