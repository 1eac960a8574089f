"""The decode cache of a linearized model: per layer, a fixed-size recurrent state (linear
layers) or growing keys/values (layers kept as softmax).

Built on transformers' ``Cache`` / ``CacheLayerMixin``: softmax layers use the stock
``DynamicLayer``; linear layers use ``RecurrentLayer``, which holds whatever state dict its
attention defines (hybrids: a window ring buffer + the linear state; GSA: slot memories) and counts
the tokens it has seen so positions and masks come out right. The state never grows with the
context: memory is O(window + feature_dim x head_dim) per head, whatever the length.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer


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

    def nbytes(self) -> int:
        """Bytes held by every layer's state (softmax layers: their keys and values)."""
        total = 0
        for layer in self.layers:
            if isinstance(layer, RecurrentLayer):
                total += layer.nbytes()
            elif getattr(layer, "keys", None) is not None and layer.keys.numel():
                total += layer.keys.numel() * layer.keys.element_size() * 2
        return total
