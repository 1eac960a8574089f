"""Launch parameters of the stored-state chunked GLA (kernels/chunk.py), one at a time against the
rules chunk.py applies by default: fwd+bwd time at Llama-3-8B heads (B1 and B4, 32 heads, T 4096, K = V = 128, key gate) and at
the SmolLM2 Lizard layer of stage 1 (B16, 9 heads, T 1024, K 128, V 65 with the normaliser column, no
value gradient). Every variant's outputs and gradients are checked against the defaults'.
    python3 benchmarks/tune_chunk.py"""
import os

import triton

import linearize.kernels  # noqa: F401
from linearize.kernels import chunk
from profile_chunk import case  # benchmarks/ is the script's directory

KNOBS = {"WALK_BV": (64,), "STATE_BK": (16, 32, 64), "WALK_WARPS": (4, 8), "DQKV_STAGES": (1,),
         "DQKV_RELOAD": (True, False)}  # each against chunk.py's rules (the "default" rows)
# LINEARIZE_TUNE="KNOB=value,..." : those settings first (the base every variant starts from)
for kv in filter(None, os.environ.get("LINEARIZE_TUNE", "").split(",")):
    key, val = kv.split("=")
    setattr(chunk, key, eval(val))


def _case(B, H, T, K, V, v_grad=True):
    args, _, do = case(B, H, T, K, V, v_grad=v_grad)
    return list(args), do


CASES = {"B1 H32 T4K 128x128": _case(1, 32, 4096, 128, 128), "B4 H32 T4K 128x128": _case(4, 32, 4096, 128, 128),
         "B16 H9 T1K 128x65 no dv": _case(16, 9, 1024, 128, 65, v_grad=False)}


def step(ins, do):
    for x in ins:
        x.grad = None
    o, _ = chunk.gla_chunked_stored(*ins, None, None, 64)
    o.backward(do)
    return o


def run(ins, do):
    o = step(ins, do)
    return [o.detach().float()] + [x.grad.float() for x in ins if x.grad is not None]


def measure(tag, ref):
    out = {}
    for name, (ins, do) in CASES.items():
        got = run(ins, do)
        if ref is not None:
            errs = [((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item() for a, b in zip(got, ref[name])]
            assert max(errs) < 2e-2, f"{tag} {name}: rel errors {errs}"
        out[name] = got
        ms = triton.testing.do_bench(lambda: step(ins, do), warmup=5, rep=40)
        print(f"{tag:24s} {name:26s} {ms:7.3f} ms", flush=True)
    return out


ref = measure("default", None)
for knob, values in KNOBS.items():
    keep = getattr(chunk, knob)
    for val in values:
        setattr(chunk, knob, val)
        try:
            measure(f"{knob}={val}", ref)
        except Exception as e:  # a config that does not compile or is wrong: say so, go on
            print(f"{knob}={val}: {type(e).__name__}: {str(e)[:200]}")
    setattr(chunk, knob, keep)
