"""One Lizard hybrid layer's chunked form (window 64 + 4 meta tokens + gated linear half), forward and
forward + backward, with the GLA half on each kernel set: the fused walk (kernels/fused_chunk.py, the
normaliser column added in the kernel) and the stored-state kernels (kernels/chunk.py).
    python3 benchmarks/bench_hybrid_layer.py [B H T D]      (default: SmolLM2-135M's training step,
                                                           16 x 9 heads x 1024 x 64, F = 128)"""
import sys

import torch
import triton

import linearize.kernels  # noqa: F401
from linearize.kernels import chunk

B, H, T, D = (int(a) for a in sys.argv[1:5]) if len(sys.argv) > 4 else (16, 9, 1024, 64)
F, dev, bf = 128, "cuda", torch.bfloat16
torch.manual_seed(0)


def leaf(x):
    return x.requires_grad_(True)


q, k, v = (leaf(torch.randn(B, H, T, D, device=dev, dtype=bf)) for _ in range(3))
fq, fk = (leaf(torch.softmax(torch.randn(B, H, T, F, device=dev), -1).to(bf)) for _ in range(2))
g = leaf(-torch.sigmoid(torch.randn(B, H, T, F, device=dev)))
mix = leaf(torch.zeros(H, device=dev, dtype=bf))
meta_k, meta_v = (leaf(torch.randn(H, 4, D, device=dev, dtype=bf)) for _ in range(2))
do = torch.randn(B, H, T, D, device=dev, dtype=bf)


def fwd():
    return chunk.hybrid_chunked_triton(q, k, v, fq, fk, g, mix, 64, D ** -0.5, None, meta_k, meta_v)


def fwd_bwd():
    fwd().backward(do)


outs = {}
for kernels in ("fused", "stored"):
    chunk.GLA_KERNELS = kernels
    with torch.no_grad():
        t_f = triton.testing.do_bench(fwd)
        outs[kernels] = fwd().float()
    t_fb = triton.testing.do_bench(fwd_bwd)
    print(f"{kernels:7s} hybrid layer B{B} H{H} T{T} D{D} F{F}: fwd {t_f:.3f} ms, fwd+bwd {t_fb:.3f} ms")
err = ((outs["fused"] - outs["stored"]).abs().max() / outs["stored"].abs().max()).item()
print(f"fused vs stored output: rel max diff {err:.2e}")
