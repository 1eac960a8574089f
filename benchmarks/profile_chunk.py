"""Per-kernel GPU time of one chunked GLA forward + backward (key gate), which launches take the time.

Default: Llama-3-8B heads (32 x 128), ours and fla's `chunk_gla`, with SDPA flash causal attention timed
beside them. ``--hybrid``: the stored-state GLA at the SmolLM2 Lizard layer of stage 1 (B16 x 9 heads x
T 1024, 128 keys, no value gradient) with values 65 wide (64 + the hybrids' normaliser column: rows of
130 bytes) against 64 and 72 wide, fp32 and bf16 gates: what the odd width costs each kernel; and 64
wide with the normaliser's ones column implicit (``normalizer=True``, what the hybrid runs).
    python3 benchmarks/profile_chunk.py [--ours] [B T]   (default: B=1 and B=4 at T=4096; --ours: no peers)
    python3 benchmarks/profile_chunk.py --hybrid"""
import sys

import torch
import triton
from torch.profiler import ProfilerActivity, profile

import linearize.kernels  # noqa: F401
from linearize.kernels import chunk

try:
    from fla.ops.gla import chunk_gla
except ImportError:
    chunk_gla = None

dev, bf = "cuda", torch.bfloat16


def kernel_table(run, steps):
    """Profile ``steps`` calls of ``run`` (after one warm-up call) and print each kernel's GPU time per call."""
    run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            run()
        torch.cuda.synchronize()
    rows = [e for e in prof.key_averages() if e.device_time_total > 0 and e.count >= steps]
    for e in sorted(rows, key=lambda e: -e.device_time_total)[:25]:
        print(f"   {e.key[:70]:70s} {e.device_time_total / steps:9.1f} us/step  x{e.count // steps}")


def case(B, H, T, K, V, gate_dtype=torch.float32, layout="bhtd", v_grad=True):
    torch.manual_seed(0)
    q, k = (torch.randn(B, H, T, K, device=dev, dtype=bf) for _ in range(2))
    v = torch.randn(B, H, T, V, device=dev, dtype=bf)
    g = (-torch.sigmoid(torch.randn(B, H, T, K, device=dev))).to(gate_dtype)
    do = torch.randn(B, H, T, V, device=dev, dtype=bf)
    if layout == "bthd":
        q, k, v, g, do = (x.transpose(1, 2).contiguous() for x in (q, k, v, g, do))
    ins = [q, k, v, g] if v_grad else [q, k, g]
    for x in ins:
        x.requires_grad_(True)
    return (q, k, v, g), ins, do


def runner(fn, args, leaves, do):
    def run():
        for x in leaves:
            x.grad = None
        fn(*args)[0].backward(do)
    return run


def llama_heads(shapes, ours_only):
    H, D = 32, 128
    impls = [("ours", lambda q, k, v, g: chunk.gla_chunked_triton(q, k, v, g, chunk_size=64), "bhtd")]
    if chunk_gla is not None and not ours_only:
        impls.append(("fla", lambda q, k, v, g: chunk_gla(q, k, v, g, scale=1.0), "bthd"))
    if not ours_only:
        impls.append(("sdpa", lambda q, k, v, g: (torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True),), "bhtd"))
    for B, T in shapes:
        for name, fn, layout in impls:
            args, leaves, do = case(B, H, T, D, D, layout=layout)
            run = runner(fn, args, leaves, do)
            ms = triton.testing.do_bench(run, warmup=5, rep=40)
            print(f"== {name} B{B} T{T}: fwd+bwd {ms:.3f} ms (do_bench)")
            kernel_table(run, 5)


def hybrid_layer():
    for V in (65, 64, 72):
        for gdt in (torch.float32, bf):
            args, leaves, do = case(16, 9, 1024, 128, V, gate_dtype=gdt, v_grad=False)
            print(f"== V={V} gate {gdt}")
            kernel_table(runner(lambda q, k, v, g: chunk.gla_chunked_stored(q, k, v, g, None, None, 64),
                                args, leaves, do), 10)
    # what the hybrid now runs: 64 values and the normaliser's ones column implicit (o is 65 wide)
    args, leaves, do = case(16, 9, 1024, 128, 64, v_grad=False)
    print("== V=64 + implicit ones column (normalizer=True, its den output apart), gate torch.float32")
    kernel_table(runner(lambda q, k, v, g: chunk.gla_chunked_stored(q, k, v, g, None, None, 64, normalizer=True),
                        args, leaves, do), 10)


if __name__ == "__main__":
    if "--hybrid" in sys.argv:
        hybrid_layer()
    else:
        args = [a for a in sys.argv[1:] if a != "--ours"]
        llama_heads([(int(args[0]), int(args[1]))] if len(args) > 1 else [(1, 4096), (4, 4096)],
                    "--ours" in sys.argv)
