"""One decode step (T = 1) of a linearized decoder layer with its matmuls merged, for fast_generate.

A HF Llama-family layer at T = 1 is launch-bound: every projection is its own tiny GEMM and every
norm, RoPE and feature-map op its own kernel (about 68 launches per layer in the H100 profile of
session 7). This module merges the weights once per generation:

    [q; k; v; gate.down] x      one GEMM (Lizard's low-rank gate reads the same normed input)
    [gate_proj; up_proj] x      one GEMM for the MLP

and runs the rest with the modules' own code (RMSNorm, RoPE, feature maps, gate squash, o_proj,
the activation), so the math is the layer's. The merged weights are copies, alive while the
decoder is: ``merge_budget`` caps their bytes (default 1 GiB, LINEARIZE_DECODE_MERGE_BYTES); a model
whose copies would exceed it (an 8B Llama: about 9 GB) runs the same path on its own projections. ``pre`` returns the step kernel's inputs, the step
kernel updates the state, ``post`` finishes the layer. With ``compile=True`` (CUDA) both halves are
compiled once with torch.compile and reused by every layer (layer weights are arguments), which
fuses the elementwise chains around the GEMMs.

Softmax layers kept by a hybrid take the same merged GEMMs around their attention over the
fixed-length key/value buffers of linearize.cache.StaticKV (``softmax_step``: SDPA with the
additive slot mask). Hedgehog / Lizard layers and plain softmax layers on plain ``nn.Linear``
projections qualify (``FusedLayer.supports``); anything else (GSA, un-merged LoRA, q/k norms, a
softmax layer with its own sliding window) keeps the module path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import dispatch
from .attention.base import apply_rope
from .attention.gates import squash
from .attention.hybrid import hybrid_step


def _plain(*mods) -> bool:
    return all(type(m) is nn.Linear for m in mods)


class FusedLayer:
    """Merged weights of one decoder layer (linear or a hybrid's softmax layer). Shapes:
    w_in [(H + 2 Hkv) D (+ r, Lizard's gate rank), hidden], w_gu [2 I, hidden]."""

    def __init__(self, layer, merge: bool = True):
        attn, mlp = layer.self_attn, layer.mlp
        projs = self.input_projections(layer)
        self.splits = [p.out_features for p in projs]
        self.w_in = self.b_in = self.w_gu = self.b_gu = None
        if not merge:  # pre / post call the projections themselves
            return
        self.w_in = torch.cat([p.weight for p in projs], 0).detach()
        if any(p.bias is not None for p in projs):  # Qwen2: q/k/v biases
            self.b_in = torch.cat([p.bias if p.bias is not None else p.weight.new_zeros(p.out_features)
                                   for p in projs]).detach()
        self.w_gu = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight], 0).detach()
        if mlp.gate_proj.bias is not None or mlp.up_proj.bias is not None:
            self.b_gu = torch.cat([b if b is not None else mlp.gate_proj.weight.new_zeros(mlp.gate_proj.out_features)
                                   for b in (mlp.gate_proj.bias, mlp.up_proj.bias)]).detach()

    @staticmethod
    def input_projections(layer):
        attn = layer.self_attn
        projs = [attn.q_proj, attn.k_proj, attn.v_proj]
        if getattr(attn, "forget_gate", None) is not None:
            projs.append(attn.forget_gate.down)
        return projs

    @staticmethod
    def merged_bytes(layer) -> int:
        """Bytes the merged copies of this layer's weights take."""
        mlp = layer.mlp
        mods = [*FusedLayer.input_projections(layer), mlp.gate_proj, mlp.up_proj]
        return sum(t.numel() * t.element_size() for m in mods for t in (m.weight, m.bias) if t is not None)

    @staticmethod
    def supports(layer) -> bool:
        attn, mlp = layer.self_attn, getattr(layer, "mlp", None)
        method = getattr(attn, "method", None)
        if method is None:  # a softmax layer a hybrid kept: HF's own attention module
            if getattr(getattr(attn, "config", None), "sliding_window", None) or not hasattr(attn, "o_proj"):
                return False
        elif method not in ("hedgehog", "lizard"):
            return False
        if mlp is None:
            return False
        if any(getattr(attn, n, None) is not None for n in ("q_norm", "k_norm")):
            return False
        if not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            return False
        return _plain(*FusedLayer.input_projections(layer), attn.o_proj, mlp.gate_proj, mlp.up_proj)

    def weights(self):
        return self.w_in, self.b_in, self.w_gu, self.b_gu


def _qkv(layer, w_in, b_in, splits, x, cos, sin):
    """Norm, one GEMM (or the projections' own, unmerged), RoPE: q [B, H, 1, D], k, v [B, Hkv, 1, D],
    and the extra columns (Lizard's gate down-projection)."""
    attn = layer.self_attn
    B = x.shape[0]
    D = attn.head_dim
    h = layer.input_layernorm(x)
    if w_in is None:
        parts = [p(h) for p in FusedLayer.input_projections(layer)]
    else:
        parts = F.linear(h, w_in, b_in).split(splits, -1)
    q, k, v = (p.view(B, 1, -1, D).transpose(1, 2) for p in parts[:3])
    q, k = apply_rope(q, k, cos.to(q.dtype), sin.to(q.dtype))
    return q, k, v, parts[3:]


def pre_softmax(layer, w_in, b_in, splits, x, cos, sin):
    """x: [B, 1, hidden] -> q [B, H, 1, D], k, v [B, Hkv, 1, D] (after RoPE)."""
    return _qkv(layer, w_in, b_in, splits, x, cos, sin)[:3]


def pre(layer, w_in, b_in, splits, x, cos, sin):
    """x: [B, 1, hidden] -> the step kernel's inputs (q, k, v, fq, fk, g: [B, H, *])."""
    attn = layer.self_attn
    q, k, v, parts = _qkv(layer, w_in, b_in, splits, x, cos, sin)
    g = None
    if parts:  # Lizard's gate from the merged GEMM's down-projection columns
        gate = attn.forget_gate
        g = squash(gate.up(parts[0]), gate.gate_max, gate.num_heads)
    a = attn._inputs(q, k, v, None, None, g=g)
    return {n: (t[:, :, 0] if torch.is_tensor(t) and n not in ("mix", "meta_k", "meta_v") else t)
            for n, t in a.items()}


def post(layer, w_gu, b_gu, x, o):
    """o: [B, H, V] the attention's output -> the layer's output [B, 1, hidden] (o_proj, residual, MLP)."""
    attn, mlp = layer.self_attn, layer.mlp
    x = x + attn.o_proj(o.reshape(x.shape[0], 1, -1).to(x.dtype))
    h = layer.post_attention_layernorm(x)
    if w_gu is None:
        return x + mlp(h)
    gate, up = F.linear(h, w_gu, b_gu).chunk(2, -1)
    return x + mlp.down_proj(mlp.act_fn(gate) * up)


_COMPILED = None


def compiled():
    """(pre, post, pre_softmax) compiled once per process (static shapes; one graph per method and batch)."""
    global _COMPILED
    if _COMPILED is None:
        import torch._dynamo

        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 32)
        _COMPILED = tuple(torch.compile(f, dynamic=False) for f in (pre, post, pre_softmax))
    return _COMPILED


def step(layer, fused: FusedLayer, cache_layer, x, cos, sin, compile: bool = False):
    """One token through a linear layer: x [B, 1, hidden] -> [B, 1, hidden]; the layer's recurrent
    state (``cache_layer.state``) is updated in place by the hybrid step kernel."""
    pre_fn, post_fn, _ = compiled() if compile else (pre, post, pre_softmax)
    w_in, b_in, w_gu, b_gu = fused.weights()
    a = pre_fn(layer, w_in, b_in, fused.splits, x, cos, sin)
    fn = dispatch.lookup("hybrid", "step", hybrid_step, **a)
    o = fn(cache_layer.state, **a)
    cache_layer.seen += 1
    return post_fn(layer, w_gu, b_gu, x, o)


def softmax_step(layer, fused: FusedLayer, static_layer, mask, x, cos, sin, compile: bool = False):
    """One token through a softmax layer kept by a hybrid: x [B, 1, hidden] -> [B, 1, hidden].
    ``static_layer``: its transformers ``StaticLayer`` (keys/values [B, Hkv, L, D], written at its
    device position); ``mask``: [B, 1, 1, L] additive, this step's slot already open (StaticKV)."""
    _, post_fn, pre_fn = compiled() if compile else (pre, post, pre_softmax)
    attn = layer.self_attn
    w_in, b_in, w_gu, b_gu = fused.weights()
    qs, k, v = pre_fn(layer, w_in, b_in, fused.splits, x, cos, sin)
    keys, values = static_layer.update(k, v)
    o = F.scaled_dot_product_attention(qs, keys, values, attn_mask=mask.to(qs.dtype), scale=attn.scaling,
                                       enable_gqa=keys.shape[1] != qs.shape[1])
    return post_fn(layer, w_gu, b_gu, x, o[:, :, 0])
