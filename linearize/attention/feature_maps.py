"""Hedgehog feature map (Zhang et al. 2024; LoLCATs): a learnable map whose dot products
mimic softmax attention's spiky weights.

    phi(x) = [softmax(x W_h + b_h), softmax(-(x W_h + b_h))]     x: [B, H, T, D] -> [B, H, T, 2F]

One W_h per head, initialised to the identity (truncated or zero-padded when F != D).
"""
from __future__ import annotations

import torch
from torch import nn

from . import dispatch
from .fusion import fused


class HedgehogFeatureMap(nn.Module):
    def __init__(self, num_heads: int, head_dim: int, feature_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_heads, head_dim, feature_dim))
        self.bias = nn.Parameter(torch.zeros(num_heads, feature_dim))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        self.weight.zero_()
        n = min(self.weight.shape[1], self.weight.shape[2])
        self.weight[:, torch.arange(n), torch.arange(n)] = 1.0
        self.bias.zero_()

    @property
    def out_dim(self) -> int:
        return 2 * self.weight.shape[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight.to(x.dtype), self.bias.to(x.dtype)
        return dispatch.lookup("hedgehog", "features", hedgehog_features, x=x, weight=w, bias=b)(x, w, b)


@fused
def hedgehog_features(x, weight, bias):
    """x: [B, H, T, D]; weight: [H, D, F]; bias: [H, F] -> [B, H, T, 2F]."""
    z = torch.einsum("bhtd,hdf->bhtf", x, weight) + bias[:, None]
    # softmax in fp32 at least: bf16 exp over a feature dim of 64 loses the small entries
    zf = z.float() if z.dtype in (torch.bfloat16, torch.float16) else z
    return torch.cat([torch.softmax(zf, -1), torch.softmax(-zf, -1)], -1).to(x.dtype)
