"""One Lizard hybrid layer's prefill (no autograd) at generate's B16 x 16K shape, piece by piece:
the lagged keys (the compiled PyTorch glue vs kernels/lagged_keys.py), the GLA half (the fused walk
with the normaliser in the kernel vs the stored-state kernels), and the whole chunked layer as
hybrid_chunked_triton routes it. Prints ms per call (triton.testing.do_bench) and the memory floor
of the lagged keys (bytes moved / 3.0 TB/s).
    python3 benchmarks/bench_prefill_layer.py [B H T W]   (default 16 9 16384 128; D 64, F 128)"""
import sys

import torch
import triton

import linearize.kernels  # noqa: F401
from linearize.attention import hybrid
from linearize.kernels import chunk, fused_chunk
from linearize.kernels.lagged_keys import lagged_keys_triton

B, H, T, W = (int(a) for a in sys.argv[1:5]) if len(sys.argv) > 4 else (16, 9, 16384, 128)
D, F, dev, bf = 64, 128, "cuda", torch.bfloat16
torch.manual_seed(0)
q, k, v = (torch.randn(B, H, T, D, device=dev, dtype=bf) for _ in range(3))
fq, fk = (torch.softmax(torch.randn(B, H, T, F, device=dev), -1).to(bf) for _ in range(2))
g = -torch.sigmoid(torch.randn(B, H, T, F, device=dev))
mix = torch.zeros(H, device=dev, dtype=bf)
meta_k, meta_v = (torch.randn(H, 4, D, device=dev, dtype=bf) for _ in range(2))


def ms(fn):
    return triton.testing.do_bench(fn, warmup=5, rep=50)


with torch.no_grad():
    kk_ref, vv_ref = hybrid.lagged_keys(fk, v, g, W)  # compiled (dynamic shapes, as at prefill)
    kk, vv = lagged_keys_triton(fk, v, g, W)
    err = ((kk.float() - kk_ref.float()).abs().max() / kk_ref.float().abs().max()).item()
    floor_ms = (fk.numel() * 2 * 2 + g.numel() * 4 + v.numel() * 2 + vv.numel() * 2) / 3.0e12 * 1e3
    print(f"lagged keys B{B} H{H} T{T} F{F} w{W}: compiled glue {ms(lambda: hybrid.lagged_keys(fk, v, g, W)):.3f} ms, "
          f"triton {ms(lambda: lagged_keys_triton(fk, v, g, W)):.3f} ms (floor {floor_ms:.3f} ms); "
          f"rel max diff {err:.2e}", flush=True)
    kk1, vv1 = lagged_keys_triton(fk, v, g, W, ones=False)
    t_fused = ms(lambda: fused_chunk.gla_fused_chunk(fq, kk1, vv1, g, None, 64, normalizer=True))
    t_stored = ms(lambda: chunk.gla_chunked_stored(fq, kk, vv, g, None, None, 64))
    o1 = fused_chunk.gla_fused_chunk(fq, kk1, vv1, g, None, 64, normalizer=True)[0].float()
    o2 = chunk.gla_chunked_stored(fq, kk, vv, g, None, None, 64)[0].float()
    err = ((o1 - o2).abs().max() / o2.abs().max()).item()
    print(f"GLA fwd K{F} V{D}+1: fused walk {t_fused:.3f} ms, stored kernels {t_stored:.3f} ms; rel max diff {err:.2e}",
          flush=True)
    t_layer = ms(lambda: chunk.hybrid_chunked_triton(q, k, v, fq, fk, g, mix, W, D ** -0.5, None, meta_k, meta_v))
    print(f"hybrid layer prefill (as routed): {t_layer:.3f} ms", flush=True)
