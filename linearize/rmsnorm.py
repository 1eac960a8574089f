"""The families' RMSNorm, with a kernel slot.

    y = w * round_to_x_dtype(x / sqrt(mean(x^2) + eps))      x: [..., hidden]; w: [hidden]

The math, and its rounding, are HF's LlamaRMSNorm (Mistral's and Qwen2's are the same code): the
mean is taken in float32, the normalised x is rounded to x's dtype before the weight multiplies it.
Conversion swaps each such module for ``RMSNorm`` (same parameter name, so checkpoints are
unchanged) because in eager PyTorch that formula is five elementwise kernels and two dtype copies,
each a full pass over the hidden states: 61 norms took ~140 ms of a 725 ms prefill at batch 16 x 16K
(session 11). A registered kernel does it in one pass, and its backward in one more (stage 2's LoRA
step runs autograd through every norm).
"""
from __future__ import annotations

import torch
from torch import nn

from .attention import dispatch

# the classes whose forward is the formula above (checked by tests/test_rmsnorm.py)
HF_RMSNORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Reference: x [..., N], weight [N] -> [..., N] in promote(weight, x) dtype."""
    xf = x.to(torch.float32)
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


class RMSNorm(nn.Module):
    """Drop-in for HF's RMSNorm modules: ``weight`` and ``variance_epsilon`` as they name them."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    @classmethod
    def from_module(cls, module: nn.Module) -> "RMSNorm":
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.weight = module.weight  # the same Parameter: no copy, optimisers and hooks keep it
        new.variance_epsilon = float(module.variance_epsilon)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fn = dispatch.lookup("rmsnorm", "forward", rms_norm, x=x, weight=self.weight)
        return fn(x, self.weight, self.variance_epsilon)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


def swap_norms(model: nn.Module) -> int:
    """Replace every HF RMSNorm of a known class in ``model`` by ``RMSNorm``, in place. Returns how many."""
    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child).__name__ in HF_RMSNORMS:
                setattr(parent, name, RMSNorm.from_module(child))
                n += 1
    return n
