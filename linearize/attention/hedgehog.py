"""Hedgehog / LoLCATs attention: learnable softmax-mimicking feature maps for the linear half,
sliding-window softmax for the local half, one shared normaliser, a learnable mix per head.

New parameters: feature_map_q, feature_map_k (per-head [D, F] maps) and mix [H].
The math and the three forms live in hybrid.py; this module wires them to a HF layer.
"""
from __future__ import annotations

import torch
from torch import nn

from . import dispatch
from .base import LinearizedAttention
from .feature_maps import HedgehogFeatureMap
from .hybrid import hybrid_chunked, hybrid_chunked_continue, hybrid_parallel, hybrid_recurrent, hybrid_step


class HedgehogAttention(LinearizedAttention):
    method = "hedgehog"

    def __init__(self, attn, lcfg, layer_idx):
        super().__init__(attn, lcfg, layer_idx)
        dev, dt = self.q_proj.weight.device, self.q_proj.weight.dtype
        self.window = int(lcfg.window)
        self.feature_map_q = HedgehogFeatureMap(self.num_heads, self.head_dim, lcfg.feature_dim).to(dev, dt)
        self.feature_map_k = HedgehogFeatureMap(self.num_heads, self.head_dim, lcfg.feature_dim).to(dev, dt)
        self.mix = nn.Parameter(torch.zeros(self.num_heads, device=dev, dtype=dt))

    # hooks Lizard fills in
    def gate(self, x):
        return None

    def meta(self):
        return None, None

    def _inputs(self, q, k, v, x, valid, g=None):
        """The hybrid forms' inputs; ``g``: the gate, when the caller computed it already (the
        decode step's merged GEMM), else ``self.gate(x)``."""
        k, v = self.expand(k), self.expand(v)
        fq, fk = self.feature_map_q(q), self.feature_map_k(k)
        g = self.gate(x) if g is None else g
        if valid is not None:  # padded steps write nothing and decay nothing
            keep = valid[:, None, :, None]
            fk, v = fk * keep.to(fk.dtype), v * keep.to(v.dtype)
            g = None if g is None else g * keep.to(g.dtype)
        meta_k, meta_v = self.meta()
        return dict(q=q, k=k, v=v, fq=fq, fk=fk, g=g, mix=self.mix, scale=self.scaling, valid=valid,
                    meta_k=meta_k, meta_v=meta_v, linear_enabled=self.linear_enabled)

    def student(self, q, k, v, x, valid, cache_layer):
        a = self._inputs(q, k, v, x, valid)
        form = self.lcfg.form
        if cache_layer is None:
            if form == "parallel":
                return hybrid_parallel(window=self.window, **a)
            if form == "recurrent":
                return hybrid_recurrent(window=self.window, **a)[0]
            fn = dispatch.lookup("hybrid", "chunked", hybrid_chunked, **a)
            return fn(window=self.window, chunk_size=self.lcfg.chunk_size, **a)
        if cache_layer.state is None and form != "recurrent":  # prefill
            fn = dispatch.lookup("hybrid", "chunked", hybrid_chunked, **a)
            o, cache_layer.state = fn(window=self.window, chunk_size=self.lcfg.chunk_size, return_state=True, **a)
            return o
        if cache_layer.state is None:
            o, cache_layer.state = hybrid_recurrent(window=self.window, **a)
            return o
        T = q.shape[2]
        if T > 1 and form != "recurrent":  # a continuation (a prompt prefilled in segments): chunked
            fn = dispatch.lookup("hybrid", "continue", hybrid_chunked_continue, **a)
            o, cache_layer.state = fn(cache_layer.state, window=self.window, chunk_size=self.lcfg.chunk_size, **a)
            return o
        step = dispatch.lookup("hybrid", "step", hybrid_step, **a)
        out = []
        for t in range(T):  # decode (T = 1), or the recurrent form token by token
            at = {n: (x if not torch.is_tensor(x) or n in ("mix", "meta_k", "meta_v") else
                      (x[:, t] if n == "valid" else x[:, :, t])) for n, x in a.items()}
            out.append(step(cache_layer.state, **at))
        return torch.stack(out, 2)

    def student_weights(self, q, k, v, x, valid):
        a = self._inputs(q, k, v, x, valid)
        return hybrid_parallel(window=self.window, return_weights=True, **a)
