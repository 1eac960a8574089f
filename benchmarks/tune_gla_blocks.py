"""Block sizes of the stored-state chunked GLA (kernels/chunk.py) at the hybrids' shape (keys 128 wide,
values 64 + the normaliser column = 65): the value block BV (64 needs two blocks for 65 columns, 128
one) and the state walk's row block STATE_BK, timed on the prefill (no autograd, B16 x 16K) and on
the training step's forward + backward (B16 x 1K), each variant checked against the first.
    python3 benchmarks/tune_gla_blocks.py"""
import itertools

import torch
import triton

import linearize.kernels  # noqa: F401
from linearize.kernels import chunk

H, K, V, dev, bf = 9, 128, 65, "cuda", torch.bfloat16
base_blocks = chunk._blocks


def inputs(B, T, grad):
    torch.manual_seed(0)
    q, k = (torch.softmax(torch.randn(B, H, T, K, device=dev), -1).to(bf).requires_grad_(grad) for _ in range(2))
    v = torch.randn(B, H, T, V, device=dev, dtype=bf).requires_grad_(grad)
    g = (-torch.sigmoid(torch.randn(B, H, T, K, device=dev)) * 0.2).requires_grad_(grad)
    return q, k, v, g


pre = inputs(16, 16384, False)
trn = inputs(16, 1024, True)
do = torch.randn(16, H, 1024, V, device=dev, dtype=bf)
ref = None
for bv, sbk in itertools.product((64, 128, 32), (64, 32)):
    chunk._blocks = lambda K_, V_, bv=bv: (base_blocks(K_, V_)[0], bv)
    chunk.STATE_BK = sbk
    with torch.no_grad():
        t_pre = triton.testing.do_bench(lambda: chunk.gla_chunked_stored(*pre[:3], pre[3], None, None, 64), rep=50)
        o_pre = chunk.gla_chunked_stored(*pre[:3], pre[3], None, None, 64)[0].float()

    def fb():
        o, _ = chunk.gla_chunked_stored(*trn[:3], trn[3], None, None, 64)
        o.backward(do)

    for x in trn:
        x.grad = None
    t_fb = triton.testing.do_bench(fb, rep=50)
    for x in trn:  # autograd accumulates into an existing .grad in place: start clean, keep copies
        x.grad = None
    fb()
    grads = [x.grad.float().clone() for x in trn]
    if ref is None:
        ref = (o_pre, grads)
    err = max([((a - b).abs().max() / b.abs().max()).item() for a, b in zip([o_pre, *grads], [ref[0], *ref[1]])])
    print(f"BV {bv:3d} STATE_BK {sbk}: prefill fwd {t_pre:7.3f} ms, train fwd+bwd {t_fb:6.3f} ms, "
          f"max rel diff to the first {err:.1e}", flush=True)
