"""Per-kernel GPU time of the hybrid decode step ("sliced": the row-slice + window kernel, then the
per-head combine) at Llama-3-8B head shapes (32 heads x 128, F 128, window 64), Lizard and Hedgehog,
batch 16 and 64: which of the two launches takes the time. Steps rotate over 4 state copies, so the
L2 holds none of them between steps (as in a real decode with 30 layers).
    python3 benchmarks/profile_decode_step.py"""
import torch
from torch.profiler import ProfilerActivity, profile

import linearize.kernels  # noqa: F401
from linearize.kernels import decode
from linearize.kernels.bench import MEM_BW, _hybrid_decode_case

H, D, F, W = 32, 128, 128, 64
for B in (16, 64):
    for gated, M in ((True, 4), (False, 0)):
        cases = [_hybrid_decode_case(B, H, D, F, W, M, gated, torch.bfloat16, "cuda") for _ in range(4)]
        nbytes = cases[0][2]
        for st, a, _ in cases:
            decode.hybrid_step_triton(st, **a)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for i in range(40):
                st, a, _ = cases[i % 4]
                decode.hybrid_step_triton(st, **a)
            torch.cuda.synchronize()
        print(f"== B{B} {'lizard' if gated else 'hedgehog'}: {nbytes / 1e6:.1f} MB a step, floor {nbytes / MEM_BW * 1e6:.1f} us")
        for e in prof.key_averages():
            if e.device_type == torch.autograd.DeviceType.CUDA or "kernel" in e.key:
                if e.count >= 40:
                    print(f"   {e.key[:60]:60s} {e.device_time_total / e.count:8.2f} us x{e.count}")
