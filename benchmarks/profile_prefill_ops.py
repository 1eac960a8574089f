"""Which PyTorch ops launch the prefill's device time: aten ops grouped by input shapes, by self CUDA
time (profile_generate.py lists kernels only, which do not say where eager copies come from).
SmolLM2-135M shape, random weights, as `bench generate` runs it.
    python3 benchmarks/profile_prefill_ops.py [B P method window softmax_layers(comma list or -)]"""
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

import linearize.kernels  # noqa: F401
from linearize.generation import prefill
from linearize.kernels.bench import smollm2_like

B, P = (int(a) for a in sys.argv[1:3]) if len(sys.argv) > 2 else (16, 16384)
method = sys.argv[3] if len(sys.argv) > 3 else "lizard"
window = int(sys.argv[4]) if len(sys.argv) > 4 else 128
soft = () if len(sys.argv) <= 5 or sys.argv[5] == "-" else tuple(int(x) for x in sys.argv[5].split(","))
_, m = smollm2_like(method, "cuda", torch.bfloat16, softmax_layers=soft, window=window)
ids = torch.randint(0, 49152, (B, P), device="cuda")
with torch.no_grad():
    prefill(m, ids[:, :256])
    prefill(m, ids)
    torch.cuda.synchronize()
    t = time.perf_counter()
    prefill(m, ids)
    torch.cuda.synchronize()
    print(f"== prefill B={B} P={P} {method} w{window} softmax {soft}: {time.perf_counter() - t:.3f} s wall")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        prefill(m, ids)
        torch.cuda.synchronize()
    avg = prof.key_averages(group_by_input_shape=True)
    print(avg.table(sort_by="self_cuda_time_total", row_limit=45, max_name_column_width=44,
                    max_shapes_column_width=90))
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=70))
