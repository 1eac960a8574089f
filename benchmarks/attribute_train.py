"""Which ops launch the training steps' GPU time: one eager call of each step of
``linearize.bench_train`` (teacher, distill, finetune) profiled with input shapes, on SmolLM2-135M's
shape (random weights), batch 16 x 1024, bf16 autocast, frozen weights in bf16.

breakdown_train.py says which kinds of kernels fill the graphed steps; the graphs hide who launched
them. The eager steps launch the same kernels, so here each op's own CUDA time is summed by
(op, input shapes, where it ran: the autograd node of a backward op, the enclosing ops of a forward one).

    python3 benchmarks/attribute_train.py [method] [batch] [seq] [rows]
"""
import sys
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity

import linearize.kernels  # noqa: F401
from linearize.bench_train import bench, profile_nth_call
from linearize.kernels.bench import smollm2_like

method = sys.argv[1] if len(sys.argv) > 1 else "lizard"
B = int(sys.argv[2]) if len(sys.argv) > 2 else 16
T = int(sys.argv[3]) if len(sys.argv) > 3 else 1024
ROWS = int(sys.argv[4]) if len(sys.argv) > 4 else 40


def frames(e, n=2):
    """Where op ``e`` was called: for a backward op the autograd node that ran it ("bwd: MulBackward0"),
    else its ``n`` nearest enclosing ops ("fwd: aten::to < aten::_to_copy"). (Kineto leaves
    ``e.stack`` empty here, and without Python tracing no source frames are among the ancestors.)"""
    names, p = [], e.cpu_parent
    while p is not None:
        if "Backward" in p.name:
            return "bwd: " + p.name.replace("autograd::engine::evaluate_function: ", "")
        if len(names) < n:
            names.append(p.name)
        p = p.cpu_parent
    return "fwd: " + " < ".join(names) if names else "fwd: top level"


def report(name, prof):
    """Self CUDA time per (op, shapes, call site), the largest first."""
    rows = defaultdict(lambda: [0.0, 0])
    total = 0.0
    for e in prof.events():
        us = e.self_device_time_total
        if us <= 0 or e.device_type != torch.autograd.DeviceType.CPU:  # ops, not their kernels
            continue
        total += us
        key = (e.name, str(e.input_shapes)[:70], frames(e))
        rows[key][0] += us
        rows[key][1] += 1
    by_site = defaultdict(float)
    for (op, _, site), (us, _) in rows.items():
        by_site[site] += us
    print(f"\n== {name}: {total / 1e3:.1f} ms of self CUDA time in ops")
    print("  by call site:")
    for site, us in sorted(by_site.items(), key=lambda x: -x[1])[:ROWS]:
        print(f"  {us / 1e3:8.2f} ms  {site[:150]}")
    print("  by op, shapes and call site:")
    for (op, shapes, site), (us, n) in sorted(rows.items(), key=lambda x: -x[1][0])[:ROWS]:
        print(f"  {us / 1e3:8.2f} ms {n:4d} x {op[:40]:40s} {shapes:70s} {site[:110]}")


wrap = profile_nth_call(("teacher", "distill", "finetune"),
                        lambda name, prof: report(f"{name} ({method}, {B}x{T}, eager)", prof),
                        activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True)


model, _ = smollm2_like(None, "cuda", torch.float32)
res = bench("smollm2-shape", B, T, method, model=model, wrap=wrap, warmup=3, iters=3, graph=False)
print()
for k in ("teacher", "distill", "finetune"):
    r = res[k]
    print(f"{k:10s} {r['step_s'] * 1e3:8.1f} ms (eager, profiled call included)")
