"""Where a training step's GPU time goes: teacher fwd+bwd, stage 1 and stage 2 on SmolLM2-135M's
shape (random weights), batch 16 x 1024, bf16 autocast. Prints step times and, per step, the top
CUDA kernels of one profiled call and the ops that take the host's time.

    python3 benchmarks/profile_train.py [method] [batch] [seq]
"""
import sys

import torch
from torch.profiler import ProfilerActivity

import linearize.kernels  # noqa: F401
from linearize.bench_train import STAGES, bench, profile_nth_call
from linearize.kernels.bench import smollm2_like

method = sys.argv[1] if len(sys.argv) > 1 else "lizard"
B = int(sys.argv[2]) if len(sys.argv) > 2 else 16
T = int(sys.argv[3]) if len(sys.argv) > 3 else 1024
model, _ = smollm2_like(None, "cuda", torch.float32)


def show(name, prof):
    print(f"== {name} ({method}, {B}x{T})")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=60))
    # the step is host-bound when the CUDA total is well under the wall time: where the host goes
    print(f"== {name} host side: top ops by self CPU time")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))


wrap = profile_nth_call(None, show, activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU])


res = bench("smollm2-shape", B, T, method, model=model, wrap=wrap, warmup=3, iters=5)
for k in ("teacher",) + STAGES:  # the *_graph rows: the same steps replayed from CUDA graphs
    if k not in res:
        continue
    r = res[k]
    print(f"{k:10s} {r['tokens_per_s']:10.0f} tok/s {r['step_s'] * 1e3:8.1f} ms  x{r.get('ratio_to_teacher', 1):.2f}")
