"""The feature_dim=128 Lizard (F = 256 after the +/- softmax) hit an illegal memory access in the
harness's scoring forward on the H100 (session 7, ablations/eval_abl-r3feat128.log), while its
training ran. This runs the same forward at scoring-like shapes (many rows, short width, bf16
weights, no grad) per feature dimension, then the chunked GLA kernel alone against the PyTorch
reference at F = 256. Run with CUDA_LAUNCH_BLOCKING=1 so a fault names its kernel.
    python3 benchmarks/check_feature_dim.py [rows width]
Session 7 result (check_feature_dim_shipped.log, compiled glue only): every case passes with the
shipped kernels, so the scoring fault was not reproduced (the harness runs the glue eager: both
are checked now); a variant of fwd_o that walked K in two 128-wide blocks faulted
here (check_feature_dim_kblocked.log) and was not kept."""
import sys
import traceback

import torch

import linearize.kernels  # noqa: F401
from linearize import LinearizeConfig, convert
from linearize.attention.gla import gla_chunked
from linearize.kernels.chunk import gla_chunked_triton

rows, width = (int(a) for a in sys.argv[1:3]) if len(sys.argv) > 2 else (256, 128)
dev = "cuda"


def model(feature_dim):
    from linearize.kernels.bench import smollm2_like

    m = convert(smollm2_like(None, dev, torch.bfloat16, num_layers=4)[0],
                LinearizeConfig(method="lizard", feature_dim=feature_dim))
    return m.to(dev, torch.bfloat16).eval()


from linearize.attention.fusion import suspended

for fd in (64, 128):
    for B, T in ((8, 4096), (rows, width)):
        for glue in ("compiled", "eager"):  # the harness scores with the glue eager (fusion.suspended)
            try:
                m = model(fd)
                x = torch.randint(0, 49152, (B, T), device=dev)
                with torch.no_grad():
                    if glue == "eager":
                        with suspended():
                            h = m.model(input_ids=x, use_cache=False).last_hidden_state
                    else:
                        h = m.model(input_ids=x, use_cache=False).last_hidden_state
                torch.cuda.synchronize()
                print(f"feature_dim={fd} forward [{B}, {T}] bf16, {glue} glue: ok, finite={bool(h.isfinite().all())}",
                      flush=True)
            except Exception:  # noqa: BLE001
                print(f"feature_dim={fd} forward [{B}, {T}] bf16, {glue} glue: FAILED", flush=True)
                traceback.print_exc()
                sys.exit(1)

torch.manual_seed(1)
for BH, T, K, V in ((72, 4096, 256, 65), (rows * 9, width, 256, 65), (rows * 9, width, 128, 65)):
    q = torch.rand(1, BH, T, K, device=dev, dtype=torch.bfloat16) / K
    k = torch.rand(1, BH, T, K, device=dev, dtype=torch.bfloat16)
    v = torch.randn(1, BH, T, V, device=dev, dtype=torch.bfloat16)
    g = -torch.rand(1, BH, T, K, device=dev) * 0.1
    with torch.no_grad():
        o, S = gla_chunked_triton(q, k, v, gk=g, chunk_size=64)
        o_ref, S_ref = gla_chunked(q.float(), k.float(), v.float(), gk=g, chunk_size=64)
    torch.cuda.synchronize()
    err = ((o.float() - o_ref).abs().max() / o_ref.abs().max()).item()
    print(f"gla_chunked_triton BH={BH} T={T} K={K} V={V} bf16: rel max err {err:.2e}", flush=True)
