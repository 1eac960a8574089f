"""Where the time of fast_generate goes: CUDA-kernel profile of the prefill (B=16, P=16K) and of
one eager decode step, SmolLM2-135M shape, lizard. Prints the top kernels and the launch count.
    python3 benchmarks/profile_generate.py [B P method [compile]]"""
import sys

import torch
from torch.profiler import ProfilerActivity, profile

import linearize.kernels  # noqa: F401
from linearize.generation import _Decoder, _prepare_states, prefill
from linearize.kernels.bench import smollm2_like

B, P = (int(a) for a in sys.argv[1:3]) if len(sys.argv) > 2 else (16, 16384)
method = sys.argv[3] if len(sys.argv) > 3 else "lizard"
comp = len(sys.argv) > 4 and sys.argv[4] == "compile"
_, m = smollm2_like(method, "cuda", torch.bfloat16)
ids = torch.randint(0, 49152, (B, P), device="cuda")
with torch.no_grad():
    prefill(m, ids[:, :256])
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        lg, cache, lp = prefill(m, ids)
        torch.cuda.synchronize()
    print(f"== prefill B={B} P={P} {method}")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=70))
    _prepare_states(cache)
    d = _Decoder(m, cache, lg.argmax(-1), lp + 1, 8, 0.0, None, compile=comp)
    d.step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        d.step()
        torch.cuda.synchronize()
    ev = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    print(f"== one eager decode step (compile={comp}): {len(ev)} CUDA kernels/memcpys, {sum(e.device_time for e in ev):.0f} us of device time")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=70))
    # the same step captured in a CUDA graph: its time per step, and the kernels one replay runs
    d.capture()
    for _ in range(3):
        d.replay()
    torch.cuda.synchronize()
    t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0.record()
    for _ in range(50):
        d.replay()
    t1.record()
    torch.cuda.synchronize()
    print(f"== graph replay: {t0.elapsed_time(t1) / 50 * 1e3:.0f} us per decode step (B={B}, {method})")
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        d.replay()
        torch.cuda.synchronize()
    ev = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    print(f"== one graph replay: {len(ev)} kernels, {sum(e.device_time for e in ev):.0f} us of device time")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=70))
