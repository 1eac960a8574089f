"""Per-kernel GPU time of one chunked GLA forward + backward (key gate, Llama-3-8B heads: 32 x 128), ours
and fla's `chunk_gla`, with SDPA flash causal attention timed beside them: which launches take the time.
    python3 benchmarks/profile_chunk.py [--ours] [B T]   (default: B=1 and B=4 at T=4096; --ours: no peers)"""
import sys

import torch
import triton
from torch.profiler import ProfilerActivity, profile

import linearize.kernels  # noqa: F401
from linearize.kernels.chunk import gla_chunked_triton

try:
    from fla.ops.gla import chunk_gla
except ImportError:
    chunk_gla = None

H, D, dev, bf = 32, 128, "cuda", torch.bfloat16
ours_only = "--ours" in sys.argv
args = [a for a in sys.argv[1:] if a != "--ours"]
shapes = [(int(args[0]), int(args[1]))] if len(args) > 1 else [(1, 4096), (4, 4096)]


def case(B, T, layout="bhtd"):
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, device=dev, dtype=bf) for _ in range(3))
    g = -torch.sigmoid(torch.randn(B, H, T, D, device=dev))
    do = torch.randn(B, H, T, D, device=dev, dtype=bf)
    if layout == "bthd":
        q, k, v, g, do = (x.transpose(1, 2).contiguous() for x in (q, k, v, g, do))
    return [x.requires_grad_(True) for x in (q, k, v, g)], do


def runner(fn, ins, do):
    def run():
        for x in ins:
            x.grad = None
        fn(*ins)[0].backward(do)
    return run


for B, T in shapes:
    impls = [("ours", lambda q, k, v, g: gla_chunked_triton(q, k, v, g, chunk_size=64), "bhtd")]
    if chunk_gla is not None and not ours_only:
        impls.append(("fla", lambda q, k, v, g: chunk_gla(q, k, v, g, scale=1.0), "bthd"))
    impls += [] if ours_only else [("sdpa", lambda q, k, v, g: (torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True),),
                  "bhtd")]
    for name, fn, layout in impls:
        ins, do = case(B, T, layout)
        run = runner(fn, ins, do)
        ms = triton.testing.do_bench(run, warmup=5, rep=40)
        run()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                run()
            torch.cuda.synchronize()
        print(f"== {name} B{B} T{T}: fwd+bwd {ms:.3f} ms (do_bench)")
        rows = [e for e in prof.key_averages() if e.device_time_total > 0 and e.count >= 5]
        rows.sort(key=lambda e: -e.device_time_total)
        for e in rows[:25]:
            print(f"   {e.key[:70]:70s} {e.device_time_total / 5:9.1f} us/step  x{e.count // 5}")
