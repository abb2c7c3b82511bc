"""The KV cache manager: the only code that allocates, writes, evicts or measures key/value memory.

Buffers are preallocated once per generation: for every layer a key and a value buffer of shape
(batch, heads, capacity, head_dim). A model call that runs T tokens sitting at slots [start, start + T)
either *writes* its fresh K/V into those slots (overwriting what was there: repeated calls for the same block
reuse its slot) or only *overrides* them for that call. Keys are stored before RoPE, with each slot's position
kept beside them, so positions can be re-applied (or shifted) when the keys are read.

Per slot the cache also keeps: the RoPE position (per row), a validity flag (padding is never attended to)
and a block index (for block-causal masks). A rolling window with sink slots evicts the oldest non-sink block
when a new block does not fit (StreamingLLM's attention sinks; Self Forcing's rolling KV cache).

Allocation is bounded: a cache whose buffers would exceed `budget_bytes` (default `DEFAULT_BUDGET_BYTES`) is
refused before any memory is taken, with one line saying the size asked, the limit and how to raise it.
The cache holds K/V and slot metadata only; what a model call measures about it (Elastic-Cache's key drift and
attention mass) is returned by that call (`stretto.models.kv_attention.Probe`).

Continuous batching (dInfer; SGLang) runs rows that sit at different blocks in one call: `start` may then be a
tensor (n,) of per-row first slots, and `rows(...)` hands a model call the subset of batch rows it runs (a
`CacheRows` view whose reads gather those rows and whose writes scatter into them, here). Rows share the slot ->
block-index map, so every row of such a cache must put its answer at the same slot (left-padded prompts).
"""

from __future__ import annotations

import torch

MIB = 2**20
# Far above what the shipped models ask (a 2,000-frame world stream with every frame kept is ~283 MiB), far
# below what a typo asks (`--window 100000` would be ~14 GiB): a mistake fails in one line, not in the OOM killer.
DEFAULT_BUDGET_BYTES = 1024 * MIB


def cache_bytes(
    layers: int, batch: int, heads: int, head_dim: int, capacity: int, dtype: torch.dtype = torch.float32
) -> int:
    """Bytes a KVCache of this shape allocates: K and V, plus positions, validity and block index per slot."""
    kv = 2 * layers * batch * heads * capacity * head_dim * dtype.itemsize
    return kv + batch * capacity * (torch.long.itemsize + torch.bool.itemsize) + capacity * torch.long.itemsize


def _mib(n: int) -> str:
    return f"{n / MIB:,.1f} MiB" if n >= MIB else f"{n / MIB:.3g} MiB"


class KVCache:
    """Preallocated per-layer K/V buffers with slot-range writes, eviction, byte accounting and a memory budget."""

    def __init__(
        self,
        layers: int,
        batch: int,
        heads: int,
        head_dim: int,
        capacity: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        sink_slots: int = 0,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
        budget_hint: str = "pass a larger budget_bytes to KVCache",
    ):
        for name, value in (("layers", layers), ("batch", batch), ("heads", heads), ("head_dim", head_dim)):
            if value < 1:
                raise ValueError(f"KVCache {name} must be >= 1, got {value}")
        if not 0 <= sink_slots < capacity:
            raise ValueError(f"KVCache sink_slots must be in [0, capacity={capacity}), got {sink_slots}")
        if budget_bytes < 1:
            raise ValueError(f"KVCache budget_bytes must be >= 1, got {budget_bytes}")
        asked = cache_bytes(layers, batch, heads, head_dim, capacity, dtype)
        if asked > budget_bytes:  # checked before allocating: a cache that does not fit is never half-made
            raise ValueError(
                f"the KV cache needs {_mib(asked)} ({capacity:,} slots x {layers} layers x batch {batch}), "
                f"over its budget of {_mib(budget_bytes)}; {budget_hint}"
            )
        shape = (layers, batch, heads, capacity, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.positions = torch.zeros(batch, capacity, dtype=torch.long, device=device)
        self.valid = torch.zeros(batch, capacity, dtype=torch.bool, device=device)
        self.blocks = torch.zeros(capacity, dtype=torch.long, device=device)
        self.capacity, self.sink_slots = capacity, sink_slots
        self.length = 0  # slots [0, length) hold data
        self.writes = 0  # slot-layer writes, for counting

    # -- memory accounting -------------------------------------------------------------------------------
    @property
    def layers(self) -> int:
        return self.k.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes allocated by the cache (all buffers, used or not)."""
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.positions, self.valid, self.blocks))

    @property
    def used_bytes(self) -> int:
        """Bytes of K/V in the slots currently holding data."""
        per_slot = 2 * self.k[:, :, :, :1].numel() * self.k.element_size()
        return per_slot * self.length

    # -- writes ------------------------------------------------------------------------------------------
    def _check_range(self, start: int, n: int) -> int:
        end = start + n
        if start < 0 or end > self.capacity:
            raise ValueError(f"slot range [{start}, {end}) outside the cache capacity {self.capacity}")
        return end

    def _ragged(self, start: int | torch.Tensor, n: int, rows: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """(row index (r, 1), slot index (r, n)) of n slots from per-row `start` in the batch rows `rows`."""
        rows = torch.arange(self.k.shape[1], device=self.k.device) if rows is None else rows
        starts = start if isinstance(start, torch.Tensor) else torch.full_like(rows, start)
        lo, hi = int(starts.min()), int(starts.max()) + n
        if lo < 0 or hi > self.capacity:
            raise ValueError(f"slot range [{lo}, {hi}) outside the cache capacity {self.capacity}")
        return rows[:, None], starts[:, None] + torch.arange(n, device=starts.device)

    @staticmethod
    def _end(start: int | torch.Tensor, n: int) -> int:
        """One past the last slot of n slots from (per-row) start."""
        return int(torch.as_tensor(start).max()) + n

    @staticmethod
    def _is_ragged(start: int | torch.Tensor, rows: torch.Tensor | None) -> bool:
        return rows is not None or isinstance(start, torch.Tensor)

    def place_frames(
        self, start: int, n_frames: int, tokens_per_frame: int, frames_per_block: int, batch: int, write: bool
    ) -> torch.Tensor:
        """Temporal positions (n_frames,) of video frames sitting at slot `start`: each frame's position is its slot.

        `start` must be a frame boundary. `write` records the frames' metadata (the position of every token, all
        valid, block = position // frames_per_block) as a commit does; otherwise they only override for one call.
        """
        if start % tokens_per_frame:
            raise ValueError(f"cache slot {start} is not at a frame boundary ({tokens_per_frame} tokens per frame)")
        first = start // tokens_per_frame
        frame_pos = torch.arange(first, first + n_frames, device=self.positions.device)
        if write:
            self.write_meta(
                start,
                frame_pos.repeat_interleave(tokens_per_frame).expand(batch, -1),
                torch.ones(batch, n_frames * tokens_per_frame, dtype=torch.bool, device=self.valid.device),
                (frame_pos // frames_per_block).repeat_interleave(tokens_per_frame),
            )
        return frame_pos

    def write_meta(
        self,
        start: int | torch.Tensor,
        positions: torch.Tensor,
        valid: torch.Tensor,
        blocks: torch.Tensor,
        rows: torch.Tensor | None = None,
    ) -> None:
        """Record position (B, T), validity (B, T) and block index (T,) of the tokens at [start, start+T).

        rows / tensor start: rows `rows` (default all) each from their own start; blocks (T,) or (n, T).
        """
        if self._is_ragged(start, rows):
            r, slots = self._ragged(start, positions.shape[1], rows)
            self.positions[r, slots], self.valid[r, slots] = positions, valid
            self.blocks[slots] = blocks.expand_as(slots)  # the same map in every row: rows agree on it
            self.length = max(self.length, int(slots[:, -1].max()) + 1)
            return
        end = self._check_range(start, positions.shape[1])
        self.positions[:, start:end] = positions
        self.valid[:, start:end] = valid
        self.blocks[start:end] = blocks
        self.length = max(self.length, end)

    def write(
        self, layer: int, start: int | torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor | None = None
    ) -> None:
        """Overwrite slots [start, start + T) of one layer with un-rotated keys and values (B, H, T, D).

        rows / tensor start: k, v (n, H, T, D) go to rows `rows` (default all), each from its own start.
        """
        if self._is_ragged(start, rows):
            r, slots = self._ragged(start, k.shape[2], rows)
            self.k[layer][r, :, slots] = k.transpose(1, 2)  # indexed (n, T, H, D): the index dims come first
            self.v[layer][r, :, slots] = v.transpose(1, 2)
            self.writes += slots.shape[1]
            return
        end = self._check_range(start, k.shape[2])
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        self.writes += end - start

    # -- reads -------------------------------------------------------------------------------------------
    def read(
        self,
        layer: int,
        start: int | None = None,
        k: torch.Tensor | None = None,
        v: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V of slots [0, length), slots [start, start + T) replaced by fresh k, v if given (not stored).

        rows: only these batch rows (gathered, a copy); start may be a tensor of per-row starts.
        """
        if self._is_ragged(start if k is not None else 0, rows):
            return self._read_rows(self.k[layer], self.v[layer], start, k, v, rows)
        if k is None:
            return self.k[layer, :, :, : self.length], self.v[layer, :, :, : self.length]
        end = start + k.shape[2]
        n = max(self.length, end)
        ks = [self.k[layer, :, :, :start], k, self.k[layer, :, :, end:n]]
        vs = [self.v[layer, :, :, :start], v, self.v[layer, :, :, end:n]]
        return torch.cat(ks, dim=2), torch.cat(vs, dim=2)

    def _read_rows(self, k_buf, v_buf, start, k, v, rows) -> tuple[torch.Tensor, torch.Tensor]:
        """read() of some rows or per-row starts: the rows' K/V gathered, fresh k, v laid over their own slots."""
        rows = torch.arange(k_buf.shape[0], device=k_buf.device) if rows is None else rows
        n = self.length if k is None else max(self.length, self._end(start, k.shape[2]))
        ks, vs = k_buf[rows, :, :n], v_buf[rows, :, :n]  # advanced indexing: copies, so overrides stay local
        if k is not None:
            r, slots = self._ragged(start, k.shape[2], rows)
            r = torch.arange(len(rows), device=rows.device)[:, None]
            ks[r, :, slots], vs[r, :, slots] = k.transpose(1, 2), v.transpose(1, 2)
        return ks, vs

    def meta(
        self,
        start: int | torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
        blocks: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(positions, valid, blocks) of slots [0, length), optionally overridden at [start, start + T).

        rows: only these batch rows; start may be a tensor of per-row starts (overriding blocks is not per row).
        """
        if self._is_ragged(start if positions is not None else 0, rows):
            return self._meta_rows(start, positions, valid, blocks, rows)
        if positions is None:
            n = self.length
            return self.positions[:, :n], self.valid[:, :n], self.blocks[:n]
        end = start + positions.shape[1]
        n = max(self.length, end)
        pos = torch.cat([self.positions[:, :start], positions, self.positions[:, end:n]], dim=1)
        val = torch.cat([self.valid[:, :start], valid, self.valid[:, end:n]], dim=1)
        blk = torch.cat([self.blocks[:start], blocks, self.blocks[end:n]])
        return pos, val, blk

    def _meta_rows(self, start, positions, valid, blocks, rows) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """meta() of some rows or per-row starts: gathered, with this call's positions and validity laid over."""
        rows = torch.arange(self.positions.shape[0], device=self.positions.device) if rows is None else rows
        n = self.length if positions is None else max(self.length, self._end(start, positions.shape[1]))
        pos, val, blk = self.positions[rows, :n], self.valid[rows, :n], self.blocks[:n].clone()
        if positions is not None:
            _, slots = self._ragged(start, positions.shape[1], rows)
            r = torch.arange(len(rows), device=rows.device)[:, None]
            pos[r, slots], val[r, slots] = positions, valid
            blk[slots] = blocks.expand_as(slots)
        return pos, val, blk

    # -- eviction and the rolling window -------------------------------------------------------------------
    def evict(self, start: int, end: int) -> None:
        """Drop slots [start, end) and move later slots down (their stored positions are kept)."""
        self._check_range(start, end - start)
        if start < self.sink_slots:
            raise ValueError(f"cannot evict sink slots: range [{start}, {end}) overlaps [0, {self.sink_slots})")
        n, tail = end - start, self.length - end
        if tail > 0:
            for buf in (self.k, self.v):
                buf[:, :, :, start : start + tail] = buf[:, :, :, end : self.length].clone()
            for buf in (self.positions, self.valid):
                buf[:, start : start + tail] = buf[:, end : self.length].clone()
            self.blocks[start : start + tail] = self.blocks[end : self.length].clone()
        self.length = max(start, self.length - n)
        self.valid[:, self.length :] = False

    def make_room(self, n: int) -> int:
        """Rolling window: evict the oldest non-sink n-slot blocks until n more fit; returns the next slot."""
        if n > self.capacity - self.sink_slots:
            raise ValueError(
                f"a block of {n} slots does not fit a cache of {self.capacity} with {self.sink_slots} sinks"
            )
        while self.length + n > self.capacity:
            self.evict(self.sink_slots, self.sink_slots + n)
        return self.length

    def reset(self) -> None:
        """Empty the cache (buffers stay allocated)."""
        self.length, self.writes = 0, 0
        self.valid.zero_()

    # -- rows: continuous batching ---------------------------------------------------------------------------
    def clear_rows(self, rows: torch.Tensor) -> None:
        """Forget what batch rows `rows` hold (a new generation takes them over): their slots are invalid."""
        self.valid[rows] = False

    def rows(self, rows: torch.Tensor | None) -> KVCache | CacheRows:
        """The cache as one model call on batch rows `rows` sees it (None: every row, the cache itself)."""
        return self if rows is None else CacheRows(self, rows)


class CacheRows:
    """Batch rows `rows` of a KVCache, read and written as if they were the whole cache (continuous batching).

    Every method delegates to the KVCache with `rows`: the buffers, their writes and their accounting stay there.
    """

    def __init__(self, cache: KVCache, rows: torch.Tensor):
        self.cache, self.index = cache, rows

    @property
    def length(self) -> int:
        return self.cache.length

    @property
    def capacity(self) -> int:
        return self.cache.capacity

    @property
    def layers(self) -> int:
        return self.cache.layers

    def write_meta(self, start, positions, valid, blocks) -> None:
        self.cache.write_meta(start, positions, valid, blocks, rows=self.index)

    def write(self, layer, start, k, v) -> None:
        self.cache.write(layer, start, k, v, rows=self.index)

    def read(self, layer, start=None, k=None, v=None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache.read(layer, start, k, v, rows=self.index)

    def meta(self, start=None, positions=None, valid=None, blocks=None) -> tuple[torch.Tensor, ...]:
        return self.cache.meta(start, positions, valid, blocks, rows=self.index)
