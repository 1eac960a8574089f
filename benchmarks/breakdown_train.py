"""Where the graphed training steps' GPU time goes, by kind of kernel, on SmolLM2-135M's shape (random
weights), batch 16 x 1024, bf16 autocast.

First the forward passes alone, each captured in a CUDA graph and replayed (no backward):
  teacher_fwd   the original model, no grad (what stage 1 must compute anyway)
  student_fwd   the converted model in mode "student", no grad
  transfer_fwd  mode "transfer" with autograd on (stage 1's forward; its backward is the rest)
Then one profiled replay of each graphed step of ``linearize.bench_train`` (teacher, distill_graph,
finetune_graph): every CUDA kernel's total time, and the totals per kind (GLA, window, SDPA, GEMM,
Inductor's fused kernels, PyTorch's elementwise / copy kernels, other Triton kernels).

    python3 benchmarks/breakdown_train.py [method] [batch] [seq] [frozen dtype: bfloat16 | float32]
"""
import re
import sys
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

import linearize.kernels  # noqa: F401
from linearize import LinearizeConfig, convert
from linearize.attention_transfer import freeze_all_but_new
from linearize.bench_train import bench, profile_nth_call, store_frozen, time_step
from linearize.kernels.bench import capture_graph, smollm2_like
from linearize.surgery import set_mode

method = sys.argv[1] if len(sys.argv) > 1 else "lizard"
B = int(sys.argv[2]) if len(sys.argv) > 2 else 16
T = int(sys.argv[3]) if len(sys.argv) > 3 else 1024
FROZEN = sys.argv[4] if len(sys.argv) > 4 else "bfloat16"  # the converted model's frozen weights (bench's default)

KINDS = (  # first match wins
    ("gla (chunk.py)", r"^_(fwd_h|fwd_o|bwd_dh|bwd_dqkv)_kernel"),
    ("gla (fused_chunk.py)", r"^_(walk|fused|fwd_walk|bwd_walk)"),
    ("window (window.py)", r"^_(fwd|bwd_dq|bwd_dkv)_kernel$"),
    ("sdpa / flash", r"sdpa|flash|fmha|cudnn|attention"),
    ("gemm", r"nvjet|gemm|cutlass|xmma|cublas|splitK"),
    ("inductor (fused glue)", r"^triton_"),
    ("copy / fill", r"[Cc]opy|Memcpy|Memset|fill"),
    ("reduce", r"reduce_kernel|Reduce"),
    ("elementwise", r"elementwise|at::native"),
    ("other triton", r"^_"),
)


def kind_of(name: str) -> str:
    for kind, pat in KINDS:
        if re.search(pat, name):
            return kind
    return "other"


def kernel_times(prof) -> dict:
    """{kernel name: (total us, calls)} over the profiled region's CUDA kernels."""
    out: dict = defaultdict(lambda: [0.0, 0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            out[e.name][0] += e.device_time_total
            out[e.name][1] += 1
    return out


def report(name: str, prof, wall_ms=None) -> None:
    k = kernel_times(prof)
    total = sum(v[0] for v in k.values())
    print(f"\n== {name}: {total / 1e3:.1f} ms of kernels" + (f", {wall_ms:.1f} ms wall" if wall_ms else ""))
    by_kind: dict = defaultdict(float)
    for n, (us, _) in k.items():
        by_kind[kind_of(n)] += us
    for kind, us in sorted(by_kind.items(), key=lambda x: -x[1]):
        print(f"  {kind:24s} {us / 1e3:8.2f} ms  {100 * us / total:5.1f} %")
    print("  top kernels:")
    for n, (us, calls) in sorted(k.items(), key=lambda x: -x[1][0])[:45]:
        print(f"  {us / 1e3:8.2f} ms {calls:5d} x  [{kind_of(n)}] {n[:110]}")


def graphed(fn):
    """fn captured in a CUDA graph (after two warm-up calls on a side stream) -> replay callable."""
    return capture_graph([fn], warmup=2)


def timed(name, replay, iters=10):
    """Median ms of ``replay`` (bench_train's timer), then one profiled replay reported by kind."""
    ms = time_step(replay, torch.device("cuda"), 3, iters) * 1e3
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        replay()
        torch.cuda.synchronize()
    report(name, prof, ms)
    return ms


amp = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731
ids = torch.randint(0, 49152, (B, T), generator=torch.Generator().manual_seed(0)).cuda()
model, _ = smollm2_like(None, "cuda", torch.float32)


def forward(m, grad=False):
    def f():
        with torch.set_grad_enabled(grad), amp():
            m(input_ids=ids, use_cache=False, logits_to_keep=1)
    return f


fwd = {"teacher_fwd": timed("teacher_fwd (no grad, logits of the last token)", graphed(forward(model)))}
student = convert(model, LinearizeConfig(method=method)).cuda()
for p in student.parameters():
    p.requires_grad_(False)
store_frozen(student, getattr(torch, FROZEN))
set_mode(student, "student")
fwd["student_fwd"] = timed("student_fwd (no grad)", graphed(forward(student)))
freeze_all_but_new(student)
store_frozen(student, getattr(torch, FROZEN))
set_mode(student, "transfer")
fwd["transfer_fwd"] = timed("transfer_fwd (autograd on, no backward)", graphed(forward(student, grad=True)))
del student, model
torch.cuda.empty_cache()


wrap = profile_nth_call(("teacher", "distill_graph", "finetune_graph"),
                        lambda name, prof: report(f"{name} ({method}, {B}x{T})", prof),
                        activities=[ProfilerActivity.CUDA])


model, _ = smollm2_like(None, "cuda", torch.float32)
res = bench("smollm2-shape", B, T, method, model=model, wrap=wrap, warmup=3, iters=5, frozen_dtype=FROZEN)
print()
for k, ms in fwd.items():
    print(f"{k:14s} {ms:8.1f} ms (graph replay)")
for k in ("teacher", "distill", "distill_graph", "finetune", "finetune_graph"):
    if k in res:
        r = res[k]
        print(f"{k:14s} {r['step_s'] * 1e3:8.1f} ms  {r['tokens_per_s']:9.0f} tok/s  x{r.get('ratio_to_teacher', 1):.2f}")
