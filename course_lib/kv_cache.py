"""Key/value caches for autoregressive decoding.

A cache stores, per layer, the keys and values of every token already processed, so that a
decode step only computes K/V for the new token(s). The model talks to any cache through two
methods (the same protocol HF transformers uses):

* ``update(layer_idx, k, v) -> (k_all, v_all)``: append this step's ``k``/``v`` of shape
  ``(batch, kv_heads, new_tokens, head_dim)`` and return everything the attention should see;
* ``get_seq_length() -> int``: how many positions are already cached.

``DynamicCache`` grows by concatenation (simple, allocates every step).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor


class Cache:
    """Base class: the protocol ``DIYModel`` relies on."""

    def update(self, layer_idx: int, k: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:  # pragma: no cover
        raise NotImplementedError("subclasses implement update()")

    def get_seq_length(self, layer_idx: int = 0) -> int:  # pragma: no cover
        raise NotImplementedError("subclasses implement get_seq_length()")

    def attended_length(self, new_tokens: int) -> int:
        """Length of the key axis ``update`` will return after adding ``new_tokens``."""
        return self.get_seq_length() + new_tokens

    def nbytes(self) -> int:
        """Bytes held by the cache's tensors."""
        return 0


class DynamicCache(Cache):
    """Grows by ``torch.cat`` along the sequence axis: memory = exactly what is cached."""

    def __init__(self) -> None:
        self.keys: List[Tensor] = []
        self.values: List[Tensor] = []

    def update(self, layer_idx: int, k: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
        if layer_idx == len(self.keys):
            self.keys.append(k)
            self.values.append(v)
        elif layer_idx < len(self.keys):
            self.keys[layer_idx] = torch.cat([self.keys[layer_idx], k], dim=2)
            self.values[layer_idx] = torch.cat([self.values[layer_idx], v], dim=2)
        else:
            raise IndexError(f"DynamicCache.update: layer {layer_idx} before layer {len(self.keys)}")
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.keys[layer_idx].shape[2] if layer_idx < len(self.keys) else 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def to_legacy(self) -> Tuple[Tuple[Tensor, Tensor], ...]:
        """The tuple-of-(k, v)-per-layer format older HF code passes around."""
        return tuple(zip(self.keys, self.values))

    @classmethod
    def from_legacy(cls, past: Optional[Sequence[Tuple[Tensor, Tensor]]]) -> "DynamicCache":
        cache = cls()
        for i, (k, v) in enumerate(past or ()):
            cache.update(i, k, v)
        return cache

    def reorder(self, index: Tensor) -> None:
        """Keep only / reorder batch rows (e.g. drop finished sequences)."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]
