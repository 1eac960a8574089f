"""The decode-step variants of kernels/decode.py ("tile"; "chunked" and "split" until session 12, which
measured them here before removing them), and the "sliced" one's knobs (rows per program
SLICED_F, warps), at the Llama-3-8B head shape of `bench decode` (32 heads x 128, F 128, window 64) and
at SmolLM2-135M's (9 heads x 64, F 128, window 64 and 128); Lizard (gates, 4 meta tokens) and Hedgehog.
Each sliced variant is checked against the fp32 PyTorch step (hybrid_step) on the same state, and
every one is timed from CUDA-graph replays like `bench decode`.
    python3 benchmarks/sweep_decode.py"""
import copy
import itertools

import torch

import linearize.kernels  # noqa: F401
from linearize.attention import hybrid
from linearize.kernels import decode
from linearize.kernels.bench import MEM_BW, _bench_graph, _hybrid_decode_case

SHAPES = [("llama3", 32, 128, 128, 64, (1, 16, 64)), ("smollm2", 9, 64, 128, 64, (1, 16)),
          ("smollm2-w128", 9, 64, 128, 128, (1, 16))]
for shape, H, D, F, W, batches in SHAPES:
    for B, (gated, M) in itertools.product(batches, ((True, 4), (False, 0))):
        st0, a, nbytes = _hybrid_decode_case(B, H, D, F, W, M, gated, torch.bfloat16, "cuda")
        ref_st = {k: (v.clone().float() if torch.is_tensor(v) and v.is_floating_point() else
                      (v.clone() if torch.is_tensor(v) else v)) for k, v in st0.items()}
        a32 = {k: (v.float() if torch.is_tensor(v) else v) for k, v in a.items()}
        o_ref = hybrid.hybrid_step(ref_st, **a32)
        name = f"{shape} B{B} {'lizard' if gated else 'hedgehog'}"

        def call(i, var):
            st, a_, _ = _hybrid_decode_case(B, H, D, F, W, M, gated, torch.bfloat16, "cuda")
            return lambda: decode.hybrid_step_triton(st, **a_, variant=var)
        for var in ("tile",):
            t = _bench_graph(lambda i: call(i, var), nbytes)
            print(f"{name} {var:8s} {t * 1e6:7.2f} us  floor {100 * nbytes / MEM_BW / t:5.1f} %", flush=True)
        for f_rows, warps in itertools.product((16, 32, 64), (1, 2, 4)):
            decode.SLICED_F, decode.SLICED_WARPS = f_rows, warps
            st = copy.deepcopy(st0)
            o = decode.hybrid_step_triton(st, **a, variant="sliced")
            err = ((o.float() - o_ref).abs().max() / o_ref.abs().max()).item()
            s_err = ((st["S"] - ref_st["S"]).abs().max() / ref_st["S"].abs().max()).item()
            ok = err < 2e-2 and s_err < 1e-5
            t = _bench_graph(lambda i: call(i, "sliced"), nbytes)
            print(f"{name} sliced F{f_rows:<3d} w{warps} {t * 1e6:7.2f} us  floor {100 * nbytes / MEM_BW / t:5.1f} %  "
                  f"o_err {err:.1e} S_err {s_err:.1e} {'ok' if ok else 'MISMATCH'}", flush=True)
