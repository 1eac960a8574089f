"""Lizard attention: Hedgehog's hybrid plus a data-dependent GLA forget gate on the linear half
(per key-feature channel, low rank, log space) and learnable meta-memory tokens that every
query's softmax half attends to (they stand in for the attention sinks the window drops).

New parameters: Hedgehog's, plus gate (down [hidden, r], up [r, H * F]) and meta_k, meta_v [H, M, D].
"""
from __future__ import annotations

import torch
from torch import nn

from .gates import LowRankGate
from .hedgehog import HedgehogAttention


class LizardAttention(HedgehogAttention):
    method = "lizard"

    def __init__(self, attn, lcfg, layer_idx):
        super().__init__(attn, lcfg, layer_idx)
        dev, dt = self.q_proj.weight.device, self.q_proj.weight.dtype
        F = self.feature_map_k.out_dim
        self.forget_gate = LowRankGate(self.hidden_size, self.num_heads, F, lcfg.gate_rank, lcfg.gate_max).to(dev, dt)
        M = int(lcfg.num_meta_tokens)
        # small random keys score near 0 and zero values add only normaliser mass: a learnable sink
        self.meta_k = nn.Parameter(torch.randn(self.num_heads, M, self.head_dim, device=dev, dtype=dt) * 0.02)
        self.meta_v = nn.Parameter(torch.zeros(self.num_heads, M, self.head_dim, device=dev, dtype=dt))

    def gate(self, x):
        return self.forget_gate(x)

    def meta(self):
        if self.meta_k.shape[1] == 0:
            return None, None
        return self.meta_k, self.meta_v
