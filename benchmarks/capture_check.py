"""Does a checkpoint's decoder forward capture in a CUDA graph (eval/scoring.py's DecoderRunner)?

    [PROFILE=1] python3 benchmarks/capture_check.py DIR [B T]   exit 0: captured, replay == eager; 1: not

Prints the replay-vs-eager difference and both times, or the capture's traceback.
"""
import os
import sys
import time
import traceback

import torch
from transformers import AutoModelForCausalLM

import linearize  # noqa: F401  (registers the Linearized* classes)
import linearize.kernels  # noqa: F401  (registers the Triton kernels)
from linearize.eval.scoring import DecoderRunner


def main(argv):
    path = argv[0]
    B, T = (int(argv[1]), int(argv[2])) if len(argv) > 2 else (32, 512)
    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda().eval()
    r = DecoderRunner(m.get_decoder(), graphs=True)
    x = torch.randint(0, m.config.vocab_size, (B, T), device="cuda")
    tag = f"LINEARIZE_COMPILE={os.environ.get('LINEARIZE_COMPILE', '1')}"
    with torch.no_grad():
        try:
            r._captured[tuple(x.shape)] = r._capture(x)
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            print(f"{tag}: capture FAILED")
            return 1
        diff = (r(x).float() - r.eager(x).float()).abs().max().item()
        times = {}
        for name, f in (("graph", r), ("eager", r.eager)):
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(10):
                f(x)
            torch.cuda.synchronize()
            times[name] = (time.perf_counter() - t) / 10 * 1e3
        if os.environ.get("PROFILE"):  # where the GPU time of one forward goes (eager: same kernels)
            from torch.profiler import ProfilerActivity, profile
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                r.eager(x)
                torch.cuda.synchronize()
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))
    print(f"{tag}: capture ok, B={B} T={T}, max |graph - eager| = {diff:.3e}, "
          f"graph {times['graph']:.1f} ms, eager {times['eager']:.1f} ms per forward")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
