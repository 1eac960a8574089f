"""The Triton sliding-window softmax (kernels/window.py) against window_chunked, on CPU through Triton's
interpreter.

TRITON_INTERPRET=1 is set before triton is imported; the interpreter has no bf16 tl.dot, so everything
here is fp32. Fresh random inputs per case (never zeros), odd lengths, batch > 1, GQA-expanded keys and
values (gradients taken at the kv heads, before the expansion), one case through a stride-0 expand view.

Tolerance: 2e-4 relative to the reference's max |value|, for num, den and the gradients of q, k, v,
meta_k and meta_v (the kernel's online max reassociates the sums: a few fp32 ulps).
"""
import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

triton = pytest.importorskip("triton")

from linearize.attention import hybrid  # noqa: E402
from linearize.attention.base import repeat_kv  # noqa: E402
from linearize.attention.window import window_chunked  # noqa: E402
from linearize.kernels import chunk  # noqa: E402
from linearize.kernels.window import _config, can_run, window_chunked_triton  # noqa: E402

from test_kernels_triton import close  # noqa: E402  (the same relative-to-max check)


def make_valid(kind, B, T):
    if kind is None:
        return None
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[0, :9] = False  # left padding longer than small windows: whole queries see nothing
    if kind == "dead_row":
        valid[-1] = False
    if kind == "holes":
        valid[1, 3:T:4] = False
    return valid


def run_case(B, Hkv, rep, T, D, V, w, M, valid_kind, chunk_size, seed, expand=False):
    gen = torch.Generator().manual_seed(seed)
    H = Hkv * rep
    q = torch.randn(B, H, T, D, generator=gen, requires_grad=True)
    k0 = torch.randn(B, 1 if expand else Hkv, T, D, generator=gen, requires_grad=True)
    v0 = torch.randn(B, 1 if expand else Hkv, T, V, generator=gen, requires_grad=True)
    if expand:  # a stride-0 view, as a caller with one kv head hands it over
        k, v = k0.expand(B, H, T, D), v0.expand(B, H, T, V)
    else:
        k, v = repeat_kv(k0, rep), repeat_kv(v0, rep)
    leaves = [q, k0, v0]
    mk = mv = None
    if M is not None:
        mk = (0.5 * torch.randn(H, M, D, generator=gen)).requires_grad_(True)
        mv = torch.randn(H, M, V, generator=gen, requires_grad=True)
        leaves += [mk, mv]
    valid = make_valid(valid_kind, B, T)
    dnum = torch.randn(B, H, T, V, generator=gen)
    dden = torch.randn(B, H, T, generator=gen)
    args = (q, k, v, D ** -0.5, w, valid, mk, mv)

    n_ref, d_ref = window_chunked(*args, chunk_size=chunk_size)
    g_ref = torch.autograd.grad((n_ref * dnum).sum() + (d_ref * dden).sum(), leaves, allow_unused=True)
    n, d = window_chunked_triton(*args, chunk_size=chunk_size)
    g = torch.autograd.grad((n * dnum).sum() + (d * dden).sum(), leaves, allow_unused=True)

    assert n.dtype == n_ref.dtype and d.dtype == d_ref.dtype and n.shape == n_ref.shape and d.shape == d_ref.shape
    close(n, n_ref, what="num")
    close(d, d_ref, what="den")
    for name, a, b in zip(("dq", "dk", "dv", "dmeta_k", "dmeta_v"), g, g_ref):
        if b is None:  # M = 0: the reference never touches the meta tensors, nor may we
            assert a is None or not a.any(), name
            continue
        close(a, b, what=name)
    return n, d, valid


def sees_nothing(valid, w):
    """[B, T]: queries with no valid key in their window."""
    T = valid.shape[1]
    cs = torch.nn.functional.pad(valid.long().cumsum(1), (1, 0))
    i = torch.arange(T)
    return cs[:, i + 1] == cs[:, (i + 1 - w).clamp(min=0)]


@pytest.mark.parametrize("T,D,V,w,M,valid_kind,chunk_size", [
    (45, 16, 16, 5, None, None, 16),         # plain band, T not a multiple of the block
    (45, 16, 16, 5, None, "left", 16),       # left padding longer than w: whole queries see nothing
    (45, 32, 24, 5, 3, "left", 16),          # D != V, V not a power of two; meta tokens
    (37, 16, 16, 1, 4, None, 16),            # w = 1: each query sees itself and the meta tokens
    (41, 16, 24, 80, None, "dead_row", 16),  # w > T: causal over the whole sequence; a row of all-False
    (43, 24, 16, 7, 2, "dead_row", 32),      # D not a power of two; the dead row sees the meta tokens only
    (53, 16, 16, 19, 4, "holes", 16),        # the band spans several key blocks; scattered padding
    (130, 16, 16, 64, 4, "left", 64),        # the GPU's block (64) and window (64)
    (39, 16, 16, 6, 0, None, 16),            # M = 0 meta tensors count as none
])
def test_window_forward_backward(T, D, V, w, M, valid_kind, chunk_size):
    B, Hkv, rep = 2, 2, 2
    n, d, valid = run_case(B, Hkv, rep, T, D, V, w, M, valid_kind, chunk_size, seed=T * 31 + D + w)
    if valid is not None and not M:
        # exactly 0 where nothing is visible (combine turns den == 0 into a 0 output, never nan)
        dead = sees_nothing(valid, w)
        assert dead.any()
        assert (d.transpose(1, 2)[dead] == 0).all() and (n.transpose(1, 2)[dead] == 0).all()


def test_window_expand_view_one_kv_head():
    run_case(B=3, Hkv=1, rep=3, T=35, D=16, V=16, w=4, M=2, valid_kind="left", chunk_size=16, seed=2, expand=True)


def test_window_fallback_and_config():
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 2, 9, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    assert not can_run(q, k, v)  # no fp64 dots in the kernels: the reference runs
    n, d = window_chunked_triton(q, k, v, 0.3, 3)
    n_ref, d_ref = window_chunked(q, k, v, 0.3, 3)
    assert torch.equal(n, n_ref) and torch.equal(d, d_ref)
    assert _config(128, 128, 64) == (128, 128, 128)
    assert _config(24, 17, 16) == (16, 32, 32)
    assert _config(256, 64, 64)[0] == 32
    assert _config(64, 64, 8)[0] == 16


def test_hybrid_chunked_triton_end_to_end():
    """Lizard-like: gated linear half, meta tokens, left padding; output and every gradient."""
    gen = torch.Generator().manual_seed(17)
    B, Hkv, rep, T, D, F, W, M = 2, 2, 2, 47, 16, 16, 6, 3
    H = Hkv * rep
    q = torch.randn(B, H, T, D, generator=gen, requires_grad=True)
    k0 = torch.randn(B, Hkv, T, D, generator=gen, requires_grad=True)
    v0 = torch.randn(B, Hkv, T, D, generator=gen, requires_grad=True)
    fq = torch.randn(B, H, T, F, generator=gen, requires_grad=True)
    fk0 = torch.randn(B, Hkv, T, F, generator=gen, requires_grad=True)
    g0 = torch.randn(B, H, T, F, generator=gen, requires_grad=True)
    mix = torch.randn(H, generator=gen, requires_grad=True)
    mk = (0.5 * torch.randn(H, M, D, generator=gen)).requires_grad_(True)
    mv = torch.randn(H, M, D, generator=gen, requires_grad=True)
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[0, :4] = False
    keep = valid[:, None, :, None]
    leaves = [q, k0, v0, fq, fk0, g0, mix, mk, mv]
    do = torch.randn(B, H, T, D, generator=gen)

    def inputs():
        # padded steps arrive with fk = v = g = 0 (hybrid.py's contract)
        return dict(q=q, k=repeat_kv(k0, rep), v=repeat_kv(v0, rep) * keep, fq=torch.softmax(fq, -1),
                    fk=torch.softmax(repeat_kv(fk0, rep), -1) * keep, g=-torch.sigmoid(g0) * keep, mix=mix,
                    window=W, scale=D ** -0.5, valid=valid, meta_k=mk, meta_v=mv, chunk_size=16)

    o_ref = hybrid.hybrid_chunked(**inputs())
    g_ref = torch.autograd.grad((o_ref * do).sum(), leaves)
    o = chunk.hybrid_chunked_triton(**inputs())
    g = torch.autograd.grad((o * do).sum(), leaves)
    assert o.dtype == o_ref.dtype
    close(o, o_ref, what="o")
    for name, a, b in zip(("q", "k", "v", "fq", "fk", "g", "mix", "meta_k", "meta_v"), g, g_ref):
        close(a, b, tol=5e-4, what=f"d{name}")


def test_bench_window_rows_cpu():
    """kernels/bench.py's window rows, each closure run once on the CPU (the timing itself needs CUDA)."""
    from linearize.kernels import bench

    rows = bench._window_rows(1, 2, 33, 16, "cpu", torch.float32, t_sdpa=2.0, w=8, M=2, timer=lambda f: (f(), 1.0)[1])
    assert [r["ms"] for r in rows] == [1e3, 1e3], rows
    assert rows[0]["ours_speedup"] == 2.0 and rows[1]["ours_speedup"] == 1.0
