"""The decode cache of a linearized model: per layer, a fixed-size recurrent state (linear
layers) or growing keys/values (layers kept as softmax).

Built on transformers' ``Cache`` / ``CacheLayerMixin``: softmax layers use the stock
``DynamicLayer``; linear layers use ``RecurrentLayer``, which holds whatever state dict its
attention defines (hybrids: a window ring buffer + the linear state; GSA: slot memories) and counts
the tokens it has seen so positions and masks come out right. The state never grows with the
context: memory is O(window + feature_dim x head_dim) per head, whatever the length.
``StaticKV`` moves the softmax layers of a prefilled cache into fixed-length ``StaticLayer``
buffers for the CUDA-graph decode of ``linearize.generation``.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer, StaticLayer


class RecurrentLayer(CacheLayerMixin):
    """One linear-attention layer's state. ``state`` is a dict of tensors (batch first) plus an
    int "n", owned and updated in place by the attention module; ``seen`` counts tokens."""

    is_sliding = False
    is_compileable = False

    def __init__(self, **kwargs):
        super().__init__()
        self.state: dict | None = None
        self.seen = 0

    def lazy_initialization(self, *args, **kwargs) -> None:
        pass

    def update(self, key_states, value_states, *args, **kwargs):
        raise RuntimeError("a linearized layer keeps a recurrent state, not keys and values")

    def get_seq_length(self, *args, **kwargs) -> int:
        return self.seen

    def get_mask_sizes(self, query_length, *args, **kwargs) -> tuple[int, int]:
        q = query_length if isinstance(query_length, int) else int(query_length.shape[0])
        return self.seen + q, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.state, self.seen = None, 0

    def offload(self):
        pass

    def prefetch(self):
        pass

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.state is None:
            return
        for name, t in self.state.items():
            if torch.is_tensor(t):
                self.state[name] = t.index_select(0, beam_idx.to(t.device))

    def crop(self, max_length: int) -> None:
        raise NotImplementedError("a recurrent state cannot be rolled back to an earlier position")

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.state is not None:
            for name, t in self.state.items():
                if torch.is_tensor(t):
                    self.state[name] = t.repeat_interleave(repeats, dim=0)

    def nbytes(self) -> int:
        if self.state is None:
            return 0
        return sum(t.numel() * t.element_size() for t in self.state.values() if torch.is_tensor(t))


class LinearizedCache(Cache):
    """A ``Cache`` whose layer i is a RecurrentLayer when layer i is linear, else a DynamicLayer."""

    def __init__(self, layer_is_linear: list[bool]):
        super().__init__(layers=[RecurrentLayer() if lin else DynamicLayer() for lin in layer_is_linear])

    @classmethod
    def for_model(cls, model) -> "LinearizedCache":
        from .surgery import linear_layer_flags

        return cls(linear_layer_flags(model))

    def get_mask_sizes(self, query_length, layer_idx: int = 0, *args, **kwargs) -> tuple[int, int]:
        """(kv_length, kv_offset) of the 4-D attention mask the model builds before its layers.

        Only the softmax layers a hybrid keeps read that mask (linear layers take the 2-D padding
        mask, which the Linearized* forward routes to them), so its size comes from the first of
        them. With none, it covers the query alone: a mask over the whole context would grow with it
        (a 16K-token prefill segment at 128K of context built a 2 GB one)."""
        for layer in self.layers:
            if not isinstance(layer, RecurrentLayer):
                return layer.get_mask_sizes(query_length, *args, **kwargs)
        return (query_length if isinstance(query_length, int) else int(query_length.shape[0])), 0

    def nbytes(self) -> int:
        """Bytes held by every layer's state (softmax layers: their keys and values)."""
        total = 0
        for layer in self.layers:
            if isinstance(layer, RecurrentLayer):
                total += layer.nbytes()
            elif getattr(layer, "keys", None) is not None and layer.keys.numel():
                total += layer.keys.numel() * layer.keys.element_size() * 2
        return total


class StaticKV:
    """The softmax-kept layers of a prefilled LinearizedCache, moved to fixed-length buffers for decode.

    Each DynamicLayer (keys/values [B, H_kv, T, D]) becomes a transformers ``StaticLayer`` of
    ``max_len`` slots holding the prompt in slots [0, T); its write position is a device tensor, so
    a decode step has one shape and can be captured in a CUDA graph. ``mask`` [B, 1, 1, max_len] is
    the additive attention mask over the slots: 0 where a key is real (a prompt token that is not
    padding, or a generated one), the dtype's minimum elsewhere (padding, slots not yet written).
    Every decode step calls :meth:`open_next` before the layers run: it unmasks the slot the step
    writes (all rows write the same slot: left padding keeps the prompts aligned).
    """

    # Buffer lengths are rounded up to a multiple of this: the compiled decode step is specialised
    # on the buffer's length, so generate calls whose prompt + new tokens land in one bucket (a short
    # warm-up call and the real one, say) reuse one compilation instead of recompiling.
    SLOT_MULTIPLE = 256

    def __init__(self, mask: torch.Tensor, next_slot: torch.Tensor):
        self.mask, self.next_slot = mask, next_slot

    @classmethod
    def slots_for(cls, n: int) -> int:
        """The buffer length for ``n`` tokens (prompt + new): n rounded up to SLOT_MULTIPLE."""
        return -(-int(n) // cls.SLOT_MULTIPLE) * cls.SLOT_MULTIPLE

    @classmethod
    def from_prefill(cls, cache: LinearizedCache, attention_mask: torch.Tensor | None, max_len: int) -> "StaticKV":
        """attention_mask: the prompt's [B, T] padding mask (1 = token) or None."""
        T = ref = None
        for i, layer in enumerate(cache.layers):
            if isinstance(layer, RecurrentLayer):
                continue
            if not isinstance(layer, DynamicLayer) or layer.keys is None or not layer.keys.numel():
                raise ValueError(f"layer {i}: expected the prompt's keys/values after the prefill, got {type(layer).__name__}")
            k, v = layer.keys, layer.values
            T = k.shape[2]
            if T > max_len:
                raise ValueError(f"prompt of {T} tokens does not fit a {max_len}-slot cache")
            st = StaticLayer(max_cache_len=max_len)
            st.lazy_initialization(k, v)
            st.keys[:, :, :T].copy_(k)
            st.values[:, :, :T].copy_(v)
            st.cumulative_length.fill_(T)
            cache.layers[i] = st
            ref = k
        if ref is None:
            raise ValueError("the cache has no softmax layer: nothing to make static")
        B = ref.shape[0]
        valid = torch.zeros(B, max_len, dtype=torch.bool, device=ref.device)
        valid[:, :T] = attention_mask.to(ref.device).bool() if attention_mask is not None else True
        mask = torch.zeros(B, 1, 1, max_len, dtype=ref.dtype, device=ref.device)
        mask.masked_fill_(~valid[:, None, None, :], torch.finfo(ref.dtype).min)
        return cls(mask, torch.full((1,), T, dtype=torch.long, device=ref.device))

    def open_next(self) -> torch.Tensor:
        """Unmask the slot this step writes and advance; returns ``mask`` (same tensor every step)."""
        self.mask.index_fill_(3, self.next_slot, 0.0)
        self.next_slot.add_(1)
        return self.mask
