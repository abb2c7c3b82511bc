"""stretto's `KVCache` behind transformers' `Cache` interface, for one model call on a slot range.

A transformers attention layer calls `past_key_values.update(key_states, value_states, layer_idx)` and attends
to what it returns. `SlotCache` answers with the same write/read rule as stretto's own attention
(`kv_attention.store_and_read`): the call's T tokens sit at slots [start, start + T) of the generation's one
`KVCache`; `write=True` stores their K/V there and returns every slot, `write=False` lays them over their slots
for this call only. Under continuous batching `kv` may be `KVCache.rows(...)` and `start` a tensor of per-row
starts, passed through unchanged. The buffers stay the KVCache's (allocated, measured and budgeted there); this
file only points transformers at them.

RoPE: transformers rotates keys before `update`, so these slots hold *rotated* keys, where stretto's own models
store them un-rotated. For text that is exact: a slot's RoPE position is fixed for the whole generation
(`left_pad_positions` of the canvas) and never shifted, so rotating at write time or at read time gives the
same key. Rotated keys are not re-positionable, so a rolling window that re-numbers positions (the world
streams) must stay on stretto's own models. Elastic-Cache's drift (1 - cosine of a slot's new key to its old
one) is unchanged: both keys carry the same rotation, which preserves angles.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from stretto.models.kv_attention import Probe, store_and_read
from stretto.models.kv_cache import KVCache


class SlotCacheLayer(CacheLayerMixin):
    """One layer of a KVCache as a transformers cache layer, for a call on slots [start, start + T)."""

    is_sliding = False

    def __init__(self, kv: KVCache, layer: int, start: int | torch.Tensor, write: bool, probe: Probe | None):
        super().__init__()
        self.kv, self.layer, self.start, self.write, self.probe = kv, layer, start, write, probe
        self.is_initialized = True  # the buffers exist: the KVCache allocated them

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Nothing to allocate: the KVCache owns the buffers."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Store (or lay over) this call's rotated K/V (B, H_kv, T, D); return the K/V of every slot attended."""
        return store_and_read(self.kv, self.layer, self.start, key_states, value_states, self.write, self.probe)

    def get_seq_length(self) -> int:
        return self.kv.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """(keys attended, offset); stretto always passes its own 4D mask, so this only reports the sizes."""
        return max(self.kv.length, int(torch.as_tensor(self.start).max()) + query_length), 0

    def get_max_length(self) -> int:
        return self.kv.capacity

    def reset(self) -> None:
        """The KVCache is reset by its owner, between generations."""


class SlotCache(Cache):
    """A KVCache as the `past_key_values` of one transformers model call on slots [start, start + T)."""

    def __init__(self, kv: KVCache, start: int | torch.Tensor, write: bool = True, probe: Probe | None = None):
        layers = [SlotCacheLayer(kv, i, start, write, probe) for i in range(kv.layers)]
        super().__init__(layers=layers)
