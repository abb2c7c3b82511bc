"""One generation's model calls over the canvas, each counted, and the KV cache they share.

A decoding program (`decode.decode_program`, with its cache mode's hooks) never calls the model itself: it
yields a `Call` (a slot range of its rows) and waits for the logits. That keeps the decoding of a row
independent of how its calls are batched: `ModelCalls` runs each call at once on the program's own rows (a
static batch, `decode.decode`), while continuous batching (`continuous`) gathers the calls of rows that sit at
different blocks into shared model calls. `Slots` is what a program knows of its canvas; `ModelCalls` is also
the executor of a static batch: it runs a call against the one `KVCache` of the generation (allocated here,
within the cache's default memory budget) and counts it into `DecodeStats`: model calls (nfe), token positions
run, refreshes, blocks, and under SparseD (`models.sparse_attention`) the share of query-key pairs attended.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import asdict, dataclass

import torch

from stretto.models.kv_attention import Probe
from stretto.models.sparse_attention import SparseD, SparsePattern
from stretto.models.text_lm import TextLM, gen_blocks, left_pad_positions

Reply = tuple[torch.Tensor, Probe | None]  # logits (B, hi - lo, vocab) of a call's rows, and its probe


@dataclass
class DecodeStats:
    """What one generation cost, counted rather than timed."""

    nfe: int = 0  # model calls (one call runs the whole batch)
    steps: int = 0  # decoding steps (commit rounds)
    positions: int = 0  # token positions run through the model, per row, summed over calls
    refreshes: int = 0  # full passes made inside a block by a refresh option
    blocks: int = 0  # blocks decoded (fewer than gen_length / block_length after an early stop)
    cache_bytes: int = 0  # bytes allocated by the KV cache
    attention: float = 1.0  # share of the allowed query-key pairs attended (SparseD); 1: dense

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Call:
    """A model call a decoding program asks for: the logits of slots [lo, hi) of its rows, probed at probe_layer."""

    lo: int
    hi: int
    probe_layer: int | None = None


class Slots:
    """What a decoding program sees of its canvas (B, S): its rows, where the answer starts, the model's layout."""

    def __init__(self, model: TextLM, canvas: torch.Tensor, gen_start: int, stats: DecodeStats | None = None):
        cfg = model.config
        self.canvas, self.gen_start, self.end = canvas, gen_start, canvas.shape[1]
        self.mask_id, self.n_layer, self.model_block = cfg.mask_id, cfg.n_layer, cfg.block_size
        self.stats = stats or DecodeStats()
        self.sparse: SparsePattern | None = None  # SparseD's pattern of the generation, stepped by the decode loop

    def run(self, lo: int, hi: int, probe_layer: int | None = None) -> Generator[Call, Reply, Reply]:
        """Inside a program: `logits, probe = yield from calls.run(lo, hi)` asks for the call and waits."""
        return (yield Call(lo, hi, probe_layer))

    def settled(self, lo: int, hi: int) -> torch.Tensor:
        """bool (B, hi - lo): slots holding their final token."""
        return self.canvas[:, lo:hi] != self.mask_id


class ModelCalls(Slots):
    """Runs the model on slot ranges [lo, hi) of the canvas (B, S), against the generation's KV cache if any."""

    def __init__(
        self, model: TextLM, canvas: torch.Tensor, gen_start: int, with_cache: bool, sparse: SparseD | None = None
    ):
        super().__init__(model, canvas, gen_start)
        cfg = model.config
        self.model = model
        self.sparse = None if sparse is None else SparsePattern(sparse, self.end, gen_start)
        self.shift = model.logit_shift  # slot i is scored at slot i - 1: a range runs from one slot earlier
        self.positions = left_pad_positions(canvas, cfg.pad_id)
        self.blocks = gen_blocks(gen_start, self.end, cfg.block_size, canvas.device)
        self.kv = model.new_cache(canvas.shape[0], self.end) if with_cache else None
        if self.kv is not None:
            self.stats.cache_bytes = self.kv.nbytes

    def __call__(self, lo: int, hi: int, probe_layer: int | None = None) -> Reply:
        """Logits (B, hi - lo, vocab) of slots [lo, hi), whose K/V are written to the cache; and the probe.

        A shifted model also runs slot lo - 1 (its output scores slot lo); its K/V is rewritten with the rest.
        """
        first = lo - 1 if self.shift and lo > 0 else lo
        self.stats.nfe += 1
        self.stats.positions += hi - first
        extra = {} if self.sparse is None else {"sparse": self.sparse}  # off: the model's call exactly as before
        out = self.model(
            self.canvas[:, first:hi], self.positions[:, first:hi], self.blocks[first:hi],
            kv_cache=self.kv, start=first, gen_start=self.gen_start, probe_layer=probe_layer, **extra,
        )  # fmt: skip
        if self.sparse is not None:
            self.stats.attention = self.sparse.fraction
        logits, probe = out if probe_layer is not None else (out, None)
        return logits[:, lo - first :], probe
