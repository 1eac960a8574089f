"""What every linearized attention shares: the reused q/k/v/o projections, RoPE, GQA, modes,
form dispatch and the recurrent state kept in the cache.

A LinearizedAttention replaces a HF attention module in place and keeps its projection modules,
so the converted checkpoint's q/k/v/o weights are the original tensors and keep their names.
Subclasses add their new parameters and implement ``student``.

Modes (``self.mode``):
  "student"   the linear attention (default);
  "teacher"   the original softmax attention on the same q/k/v;
  "transfer"  stage 1: run both, store ``self.transfer_loss`` (MSE of the outputs after o_proj,
              + ``transfer_ce_weight`` x attention-weight cross-entropy where the method has
              weights) and return the teacher's output, so the next layer sees the teacher's
              hidden states; the input is detached, so every layer trains on its own.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LinearizeConfig
from ..cache_kwarg import pick_cache
from . import dispatch
from .fusion import fused
from .softmax import softmax_attention, softmax_weights

MODES = ("student", "teacher", "transfer")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


@fused
def output_mse(pred, target):
    """Stage 1's loss of one layer: mean((pred - target)^2) in float32, pred, target: [B, T, hidden].
    Compiled on the GPU: one reduction forward and one kernel backward, instead of two float32
    copies, the loss, its backward and a cast back."""
    return F.mse_loss(pred.float(), target.float())


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(q, k, cos, sin):
    """q, k: [B, H, T, D]; cos, sin: [B, T, D] (HF's rotary embedding output)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def rope_head_major(q, k, cos, sin):
    """q: [B, T, H, D], k: [B, T, Hkv, D] (projections viewed per head); cos, sin: [B, T, D] ->
    RoPE-rotated q, k with the heads first: [B, H, T, D], [B, Hkv, T, D]. A kernel may register for
    ("rope", "head_major") (linearize.kernels: CUDA, no autograd)."""
    return apply_rope(q.transpose(1, 2), k.transpose(1, 2), cos.to(q.dtype), sin.to(q.dtype))


def repeat_kv(x, n_rep: int):
    """[B, Hkv, T, D] -> [B, Hkv * n_rep, T, D] (query head h uses kv head h // n_rep)."""
    if n_rep == 1:
        return x
    B, H, T, D = x.shape
    return x[:, :, None].expand(B, H, n_rep, T, D).reshape(B, H * n_rep, T, D)


def padding_from_mask(attention_mask, T):
    """[B, T] bool of real (non-padding) tokens among the last T, from a 2-D padding mask or HF's
    4-D causal mask (its last query row sees every real key). None when nothing is padded.
    A 2-D mask is taken as given: the model's forward already dropped an all-ones one."""
    if attention_mask is None:
        return None
    if attention_mask.dim() == 2:
        return attention_mask[:, -T:].bool()
    if attention_mask.dim() == 4:
        row = attention_mask[:, 0, -1, -T:]
        valid = row if row.dtype == torch.bool else row == 0
    else:
        raise ValueError(f"unexpected attention_mask shape {tuple(attention_mask.shape)}")
    if valid.is_cuda and torch.cuda.is_current_stream_capturing():
        # HF materialises the causal mask while a CUDA graph is captured; checking it would sync
        # the host (not allowed in a capture), and an all-real mask gives the same result
        return valid
    return None if bool(valid.all()) else valid


class LinearizedAttention(nn.Module):
    method = ""

    def __init__(self, attn: nn.Module, lcfg: LinearizeConfig, layer_idx: int):
        super().__init__()
        for name in PROJECTIONS:
            setattr(self, name, getattr(attn, name))
        self.layer_idx = layer_idx
        self.head_dim = int(getattr(attn, "head_dim", 0) or self.q_proj.out_features // attn.config.num_attention_heads)
        self.num_heads = self.q_proj.out_features // self.head_dim
        self.num_kv_heads = self.k_proj.out_features // self.head_dim
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"layer {layer_idx}: {self.num_heads} query heads are not a multiple of {self.num_kv_heads} kv heads")
        self.scaling = float(getattr(attn, "scaling", self.head_dim ** -0.5))
        self.hidden_size = self.q_proj.in_features
        self.lcfg = lcfg
        self.mode = "student"
        self.transfer_ce_weight = 0.0
        self.transfer_loss = None
        self.linear_enabled = True  # hybrids: False drops the linear half (ablations, tests)

    # -- what the subclasses provide
    def student(self, q, k, v, x, valid, cache_layer):
        """q: [B, H, T, D]; k, v: [B, Hkv, T, D] (after RoPE); x: [B, T, hidden] the layer input;
        valid: [B, T] bool or None; cache_layer: a RecurrentLayer or None. Returns [B, H, T, D]
        (and, when asked by ``student_weights``, attention weights)."""
        raise NotImplementedError

    def student_weights(self, q, k, v, x, valid):
        """Normalised attention weights [B, H, T, T] where the method has them, else None."""
        return None

    # -- shared machinery
    def new_parameters(self):
        """The parameters conversion created (everything but the reused projections)."""
        return [p for n, p in self.named_parameters() if n.split(".")[0] not in PROJECTIONS]

    def project(self, x, position_embeddings):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, -1, self.head_dim)
        k = self.k_proj(x).view(B, T, -1, self.head_dim)
        v = self.v_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        rope = dispatch.lookup("rope", "head_major", rope_head_major, q=q, k=k, cos=cos, sin=sin)
        q, k = rope(q, k, cos, sin)
        return q, k, v

    def expand(self, x):
        return repeat_kv(x, self.num_heads // self.num_kv_heads)

    def teacher(self, q, k, v, valid):
        return softmax_attention(q, k, v, self.scaling, valid)

    def _out(self, y):
        B, H, T, D = y.shape
        return self.o_proj(y.transpose(1, 2).reshape(B, T, H * D))

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None,
                linearize_padding_mask=None, cache=None, **kwargs):
        past_key_values = pick_cache(cache, past_key_values)  # transformers >= 5.24 passes `cache`
        T = hidden_states.shape[1]
        if linearize_padding_mask is False:  # the model's forward saw no padding (see modeling.py)
            valid = None
        else:
            valid = padding_from_mask(linearize_padding_mask if linearize_padding_mask is not None else attention_mask, T)
        if self.mode not in MODES:
            raise ValueError(f"unknown attention mode {self.mode!r}: one of {MODES}")
        if self.mode == "transfer":
            return self._transfer(hidden_states.detach(), position_embeddings, valid), None
        q, k, v = self.project(hidden_states, position_embeddings)
        if self.mode == "teacher":
            if past_key_values is not None and past_key_values.get_seq_length() > 0:
                raise RuntimeError("teacher mode recomputes softmax over the sequence given; it cannot continue a cache")
            return self._out(self.teacher(q, k, v, valid)), None
        layer = None
        if past_key_values is not None:
            layer = past_key_values.layers[self.layer_idx]
        y = self.student(q, k, v, hidden_states, valid, layer)
        if layer is not None:
            layer.seen += T
        return self._out(y.to(hidden_states.dtype)), None

    def _transfer(self, x, position_embeddings, valid):
        with torch.no_grad():
            q, k, v = self.project(x, position_embeddings)
            target = self._out(self.teacher(q, k, v, valid))
        pred = self._out(self.student(q, k, v, x, valid, None).to(x.dtype))
        if valid is not None:
            m = valid[..., None].to(pred.dtype)
            loss = ((pred.float() - target.float()) ** 2 * m).sum() / (m.sum() * pred.shape[-1]).clamp_min(1)
        else:
            loss = output_mse(pred, target)
        if self.transfer_ce_weight > 0:
            w_s = self.student_weights(q, k, v, x, valid)
            if w_s is not None:
                w_t = softmax_weights(q, self.expand(k), self.scaling, valid)
                ce = -(w_t * w_s.float().clamp_min(1e-12).log()).sum(-1).mean()
                loss = loss + self.transfer_ce_weight * ce
        self.transfer_loss = loss
        return target

    def extra_repr(self):
        return f"method={self.method}, heads={self.num_heads}, kv_heads={self.num_kv_heads}, head_dim={self.head_dim}"
