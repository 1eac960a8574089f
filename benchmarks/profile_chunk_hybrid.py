"""Per-kernel GPU time of the stored-state GLA at the SmolLM2 Lizard layer of stage 1 (B16 x 9 heads x
T 1024, 128 keys, no value gradient), values 65 wide (64 + the hybrids' normaliser column: rows of 130
bytes) against 64 and 72 wide: what the odd width costs each kernel.
    python3 benchmarks/profile_chunk_hybrid.py"""
import torch
from torch.profiler import ProfilerActivity, profile

import linearize.kernels  # noqa: F401
from linearize.kernels import chunk

B, H, T, K, dev, bf = 16, 9, 1024, 128, "cuda", torch.bfloat16
for V in (65, 64, 72):
    for gdt in (torch.float32, bf):
        torch.manual_seed(0)
        q, k = (torch.randn(B, H, T, K, device=dev, dtype=bf).requires_grad_() for _ in range(2))
        v = torch.randn(B, H, T, V, device=dev, dtype=bf)
        g = (-torch.sigmoid(torch.randn(B, H, T, K, device=dev))).to(gdt).requires_grad_()
        do = torch.randn(B, H, T, V, device=dev, dtype=bf)

        def run():
            o, _ = chunk.gla_chunked_stored(q, k, v, g, None, None, 64)
            o.backward(do)
        for _ in range(3):
            run()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                run()
            torch.cuda.synchronize()
        print(f"== V={V} gate {gdt}")
        for e in sorted(prof.key_averages(), key=lambda e: -e.device_time_total):
            if e.device_time_total > 0 and e.count >= 10:
                print(f"   {e.key[:40]:40s} {e.device_time_total / 10:8.1f} us")
