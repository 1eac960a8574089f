"""Gated slot attention (Zhang et al. 2024) on the converted layer's q/k/v: a bounded memory of
m slots per head written through a data-dependent forget gate, read with a softmax over slots.

New parameters: forget_gate (down [hidden, r], up [r, H * m]). The math and forms live in
gated_slots.py.
"""
from __future__ import annotations

import torch

from . import dispatch
from .base import LinearizedAttention
from .gated_slots import gsa_chunked, gsa_parallel, gsa_recurrent, gsa_step
from .gates import LowRankGate


class GSAAttention(LinearizedAttention):
    method = "gsa"

    def __init__(self, attn, lcfg, layer_idx):
        super().__init__(attn, lcfg, layer_idx)
        dev, dt = self.q_proj.weight.device, self.q_proj.weight.dtype
        # slots forget faster than the hybrids' linear half: they are the only memory here
        self.forget_gate = LowRankGate(self.hidden_size, self.num_heads, lcfg.num_slots, lcfg.gate_rank,
                                       lcfg.gate_max, alpha0=0.9).to(dev, dt)

    def student(self, q, k, v, x, valid, cache_layer):
        k, v = self.expand(k), self.expand(v)
        g = self.forget_gate(x)
        if valid is not None:
            g = g * valid[:, None, :, None].to(g.dtype)
        a = dict(q=q, k=k, v=v, g=g, scale=self.scaling)
        form = self.lcfg.form
        state = None if cache_layer is None else cache_layer.state
        if state is not None and (q.shape[2] == 1 or form == "recurrent"):
            step = dispatch.lookup("gsa", "step", gsa_step, **a)
            out = [step(state, q[:, :, t], k[:, :, t], v[:, :, t], g[:, :, t], self.scaling) for t in range(q.shape[2])]
            return torch.stack(out, 2)
        if form == "parallel":
            o, state = gsa_parallel(state=state, **a)
        elif form == "recurrent":
            o, state = gsa_recurrent(**a)
        else:  # a prefill, or a continuation from ``state`` (a prompt prefilled in segments)
            fn = dispatch.lookup("gsa", "chunked", gsa_chunked, **a)
            o, state = fn(chunk_size=self.lcfg.chunk_size, state=state, **a)
        if cache_layer is not None:
            cache_layer.state = state
        return o
