"""Next-token cross-entropy from the last hidden states, without the full logits.

    loss = mean over positions t with a label of  logsumexp(h_t W^T) - (h_t W^T)[y_{t+1}]
    h: [B, T, hidden] (the final norm's output); W: [vocab, hidden] (the LM head); labels: [B, T]

HF computes it as logits = h W^T ([B*T, vocab], 1.6 GB in bf16 for SmolLM2 at 16 x 1024), a float32
copy of them, log-softmax, and in the backward the float32 softmax gradient and its cast back: about
seven passes over B*T*vocab elements, more time than the LM head's two matmuls.

Here the rows go in chunks: each chunk's logits are computed, turned in place into the softmax
gradient p - onehot(y) (one kernel: two reads, one write; ``softmax_grad_rows``), and multiplied
by W at once, so the forward also leaves dh (and dW, if W trains) for the backward to scale by
the incoming gradient: the chunk's logits are never kept. This is the fused linear cross-entropy of
Liger-Kernel and others. Only where a backward will follow (autograd on): evaluation keeps HF's.
"""
from __future__ import annotations

import torch

from .attention import dispatch
from .data import IGNORE_INDEX


def softmax_grad_rows(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Reference. logits: [n, V] (overwritten with softmax(logits) - onehot(target), 0 on rows whose
    target is IGNORE_INDEX); targets: [n] long -> per-row loss logsumexp - logit[target] (0 where
    ignored), float32 [n]. A kernel may register for ("lm_loss", "softmax_grad")."""
    x = logits.float()
    lse = torch.logsumexp(x, -1)
    valid = targets != IGNORE_INDEX
    t = targets.clamp_min(0)
    picked = x.gather(1, t[:, None])[:, 0]
    loss = torch.where(valid, lse - picked, torch.zeros_like(lse))
    p = torch.exp(x - lse[:, None])
    p.scatter_add_(1, t[:, None], -torch.ones_like(p[:, :1]))
    logits.copy_(p * valid[:, None])
    return loss


def chunk_rows(vocab: int, budget_bytes: int = 1 << 29) -> int:
    """Rows per chunk: the chunk's bf16 logits within ``budget_bytes`` (512 MB), a power of two."""
    rows = max(1, budget_bytes // (2 * vocab))
    return 1 << (rows.bit_length() - 1)


class ChunkedLMLoss(torch.autograd.Function):
    """(h [N, hidden], W [V, hidden], targets [N], rows per chunk, compute dtype) -> mean loss over
    the rows with a target. The forward also computes the gradients for a unit upstream gradient."""

    @staticmethod
    def forward(ctx, h, weight, targets, rows, dtype):
        N = h.shape[0]
        hc, wc = h.to(dtype), weight.to(dtype)
        n_valid = (targets != IGNORE_INDEX).sum().clamp_min(1).float()
        dh = torch.empty_like(hc) if ctx.needs_input_grad[0] else None
        dw = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        total = torch.zeros((), device=h.device, dtype=torch.float32)
        for a in range(0, N, rows):
            b = min(a + rows, N)
            logits = hc[a:b] @ wc.t()  # [n, V] in the compute dtype
            grad_fn = dispatch.lookup("lm_loss", "softmax_grad", softmax_grad_rows, logits=logits, targets=targets)
            total = total + grad_fn(logits, targets[a:b]).sum()
            if dh is not None:
                torch.matmul(logits, wc, out=dh[a:b])
            if dw is not None:
                dw += (logits.t() @ hc[a:b]).float()
        ctx.save_for_backward(dh, dw, n_valid)
        ctx.h_dtype, ctx.w_dtype = h.dtype, weight.dtype
        return total / n_valid

    @staticmethod
    def backward(ctx, g):
        dh, dw, n_valid = ctx.saved_tensors
        scale = g / n_valid
        return (None if dh is None else (dh * scale).to(ctx.h_dtype),
                None if dw is None else (dw * scale).to(ctx.w_dtype), None, None, None)


def lm_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """Causal LM loss as HF's ForCausalLMLoss (labels shifted left by one, IGNORE_INDEX skipped, mean
    over the rest): hidden [B, T, hidden], weight [V, hidden], labels [B, T] -> scalar float32.
    Computed in autocast's dtype when autocast is on (as HF's LM head would be), else in the
    promoted dtype of hidden and weight."""
    B, T, Hd = hidden.shape
    targets = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX).reshape(-1)
    dev = hidden.device.type
    if torch.is_autocast_enabled(dev):
        dtype = torch.get_autocast_dtype(dev)
    else:
        dtype = torch.promote_types(hidden.dtype, weight.dtype)
    rows = rows or chunk_rows(weight.shape[0])
    with torch.autocast(dev, enabled=False):
        return ChunkedLMLoss.apply(hidden.reshape(B * T, Hd), weight, targets.to(hidden.device), rows, dtype)
