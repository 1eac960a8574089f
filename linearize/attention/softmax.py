"""Causal softmax attention: the teacher, computed from the same q/k/v as the student.

A layer converted with method "softmax" keeps the model's own attention module untouched; this
function is what a linearized layer runs in "teacher" and "transfer" modes.

    o = softmax(scale * q k^T + causal/padding mask) v     q: [B, H, T, D]; k, v: [B, Hkv, T, D]

with H a multiple of Hkv (GQA: query head h reads kv head h // (H / Hkv)), passed to SDPA as they
are rather than repeated to H heads: the repeat was two copies of k and v per layer and call.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def softmax_attention(q, k, v, scale, valid=None):
    """valid: [B, T] bool or None. A padded query attends to itself only (its output is unused),
    so no row is empty and nothing becomes nan."""
    gqa = k.shape[1] != q.shape[1]
    if valid is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    T = q.shape[2]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    eye = torch.eye(T, dtype=torch.bool, device=q.device)
    mask = (causal & valid[:, None, None, :]) | eye
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)


def softmax_weights(q, k, scale, valid=None):
    """The teacher's attention weights [B, H, T, T] (small T: for attention-weight losses)."""
    T = q.shape[2]
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()[None, None]
    if valid is not None:
        mask = (mask & valid[:, None, None, :]) | torch.eye(T, dtype=torch.bool, device=q.device)
    s = (scale * q @ k.transpose(-1, -2)).float().masked_fill(~mask, float("-inf"))
    return torch.softmax(s, -1)
