"""A KV cache that appends in place, for decoding loops that know their final length.

Hugging Face's ``DynamicLayer`` appends a step's keys and values with ``torch.cat``, which
copies the whole cache on every token: at 64 rows x 120 positions x 30 layers that is about
0.4 GB of memory traffic per decoding step on SmolLM2, a fifth of the answerer's time on CPU
(``bench/bench_reward.py``). ``ReservedLayer`` keeps keys and values in a buffer with room for
``capacity`` positions and returns views of its filled part, so appending writes only the new
positions. It still grows (by copying) if a caller goes past ``capacity``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers.cache_utils import DynamicCache, DynamicLayer


class ReservedLayer(DynamicLayer):
    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0
        self._k: Tensor | None = None
        self._v: Tensor | None = None

    def _views(self) -> None:
        self.keys = self._k[..., : self.length, :]
        self.values = self._v[..., : self.length, :]

    def _reserve(self, like: Tensor, needed: int) -> None:
        size = max(self.capacity, needed)
        k = like.new_empty(*like.shape[:-2], size, like.size(-1))
        v = torch.empty_like(k)
        if self._k is not None and self.length:
            k[..., : self.length, :] = self._k[..., : self.length, :]
            v[..., : self.length, :] = self._v[..., : self.length, :]
        self._k, self._v, self.capacity = k, v, size

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.size(-2)
        if self._k is None or end > self._k.size(-2):
            self._reserve(key_states, end)
        self._k[..., self.length : end, :] = key_states
        self._v[..., self.length : end, :] = value_states
        self.length = end
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        self.length = max(self.length + tokens_to_remove, 0)
        if self._k is not None:
            self._views()

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self._k is not None:
            self._k = self._k.repeat_interleave(repeats, dim=0)
            self._v = self._v.repeat_interleave(repeats, dim=0)
            self._views()

    def batch_select_indices(self, indices: Tensor) -> None:
        if self._k is not None:
            self._k = self._k[indices]
            self._v = self._v[indices]
            self._views()


def reserved_cache(prefix: DynamicCache | None, rows: int, capacity: int) -> DynamicCache:
    """A cache of ``rows`` copies of ``prefix`` (batch 1, or None for an empty start) with room for
    ``capacity`` positions per layer."""
    cache = DynamicCache()
    if prefix is None:
        cache.layer_class_to_replicate = lambda: ReservedLayer(capacity)
        return cache
    cache.layers = []
    for layer in prefix.layers:
        new = ReservedLayer(capacity)
        new.update(layer.keys.expand(rows, *layer.keys.shape[1:]), layer.values.expand(rows, *layer.values.shape[1:]))
        cache.layers.append(new)
    return cache
