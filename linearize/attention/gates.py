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
        B, T, _ = x.shape
        z = self.up(self.down(x)).float()
        g = -self.gate_max * torch.sigmoid(z)
        return g.view(B, T, self.num_heads, self.channels).transpose(1, 2)
