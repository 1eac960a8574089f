"""Triton softmax gradient of a chunk of logits, in place (the LM loss of linearize.lm_loss).

Same contract as linearize.lm_loss.softmax_grad_rows:

    logits: [n, V] (rows with a unit last stride), overwritten with softmax(logits) - onehot(target)
    (0 on rows whose target is ignored); targets: [n] -> loss per row, logsumexp - logit[target]

One program per row: a first pass keeps a running max and sum of exponentials per lane (float32),
a second writes the gradient. Two reads and one write of the row in its own dtype, where PyTorch's
log-softmax path makes a float32 copy and passes over it four more times.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _softmax_grad_kernel(x_ptr, t_ptr, loss_ptr, V, sx, IGNORE: tl.constexpr, BV: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = x_ptr + row * sx
    t = tl.load(t_ptr + row)
    cols = tl.arange(0, BV)
    m = tl.full([BV], float("-inf"), tl.float32)
    s = tl.zeros([BV], tl.float32)
    for start in range(0, V, BV):
        x = tl.load(base + start + cols, mask=start + cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, x)
        # lanes that have seen only -inf keep s = 0 (exp(-inf - -inf) would be nan)
        s = tl.where(m_new == float("-inf"), 0.0, s * tl.exp(m - m_new) + tl.exp(x - m_new))
        m = m_new
    mx = tl.max(m, 0)
    lse = mx + tl.log(tl.sum(s * tl.exp(m - mx), 0))
    valid = t != IGNORE
    tt = tl.where(valid, t, 0)
    xt = tl.load(base + tt).to(tl.float32)
    tl.store(loss_ptr + row, tl.where(valid, lse - xt, 0.0))
    keep = tl.where(valid, 1.0, 0.0)
    for start in range(0, V, BV):
        c = start + cols
        x = tl.load(base + c, mask=c < V, other=0.).to(tl.float32)
        p = tl.exp(x - lse) - tl.where(c == tt, 1.0, 0.0)
        tl.store(base + c, (p * keep).to(x_ptr.dtype.element_ty), mask=c < V)


def softmax_grad_rows_triton(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Same contract as linearize.lm_loss.softmax_grad_rows."""
    from linearize.data import IGNORE_INDEX

    n, V = logits.shape
    loss = torch.empty(n, device=logits.device, dtype=torch.float32)
    if n == 0:
        return loss
    _softmax_grad_kernel[(n,)](logits, targets.contiguous(), loss, V, logits.stride(0), IGNORE=IGNORE_INDEX,
                               BV=min(4096, triton.next_power_of_2(V)), num_warps=8)
    return loss


def supports(logits, targets) -> bool:
    """CUDA, unit last stride, float logits."""
    return (logits.is_cuda and logits.dim() == 2 and logits.stride(-1) == 1
            and logits.dtype in (torch.float16, torch.bfloat16, torch.float32))
