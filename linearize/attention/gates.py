"""Data-dependent forget gate from a low-rank projection of the layer input, in log space.

    g = -gate_max * sigmoid(W_up W_down x + b)        x: [B, T, hidden] -> g: [B, H, T, C]

g lies in (-gate_max, 0): alpha = exp(g) is a per-channel decay in (exp(-gate_max), 1). The bound
keeps chunked forms finite (exp(chunk_size * gate_max) must fit in fp32). W_up starts at zero
so the gate starts constant at alpha0 (long memory) and learns its data dependence.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .fusion import fused


class LowRankGate(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, channels: int, rank: int,
                 gate_max: float = 1.0, alpha0: float = 0.99):
        super().__init__()
        self.num_heads, self.channels, self.gate_max = num_heads, channels, float(gate_max)
        self.down = nn.Linear(hidden_size, rank, bias=False)
        self.up = nn.Linear(rank, num_heads * channels, bias=True)
        self.alpha0 = alpha0
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        nn.init.normal_(self.down.weight, std=self.down.in_features ** -0.5)
        nn.init.zeros_(self.up.weight)
        frac = min(max(-math.log(self.alpha0) / self.gate_max, 1e-6), 1 - 1e-6)
        nn.init.constant_(self.up.bias, math.log(frac / (1 - frac)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return squash(self.up(self.down(x)), self.gate_max, self.num_heads)


@fused
def squash(z, gate_max: float, num_heads: int):
    """z: [B, T, H * C] gate logits -> g = -gate_max * sigmoid(z) as [B, H, T, C] float32, contiguous."""
    B, T, _ = z.shape
    g = -gate_max * torch.sigmoid(z.float())
    # contiguous here, where Inductor writes the heads-first layout in the same kernel: the GLA and
    # lagged-keys kernels want it, and a transposed view cost a 75 MB copy per layer (stage 1)
    return g.view(B, T, num_heads, -1).transpose(1, 2).contiguous()
