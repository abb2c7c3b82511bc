"""Refresh options of the prefix and dual caches: when K/V that went stale inside a block is recomputed.

Each option is a small class overriding the hooks it needs; a cache holds any combination of them
("prefix:every=3,delay", "dual:every=4,drift=0.05"):
- `Periodic` (every=N): a full pass every N steps inside a block, besides the one at the block start.
- `DriftRefresh` (drift=b[,layer=l]): Elastic-Cache (Nguyen-Tri et al. 2025): a full pass when the key of the
  most-attended settled token of the block drifted (1 - cosine to its previous value) by more than b at some
  layer >= l. It reads the `Probe` the model call returns, never the cache.
- `DelayedCaching` (delay): dKV-Cache's delayed caching (Ma et al. 2025) at block granularity: a block's K/V is
  cached on the step after it is finished, so a block start recomputes from the previous block onward instead
  of from the first slot.
Options keep per-generation state (the watched token, the previous block), dropped by `start()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from stretto.models.kv_attention import Probe


class Refresh:
    """Base of the refresh options: hooks the prefix / dual cache calls; the defaults change nothing."""

    probes: ClassVar[bool] = False  # needs the Probe of every model call

    def start(self) -> None:
        """Called at the start of every generation."""

    def start_block(self, lo: int) -> None:
        """Called when the block starting at slot lo starts."""

    def first_pass_start(self) -> int:
        """The slot the block's first full pass starts at (earlier slots keep their cached K/V)."""
        return 0

    def periodic(self, step: int) -> bool:
        """A full pass before this step (step >= 1) of the block?"""
        return False

    def stale(self, probe: Probe | None) -> bool:
        """After a cheap step: is the cached K/V too stale, so the step is run again as a full pass?"""
        return False

    def observe(self, probe: Probe | None, lo: int, hi: int, settled: torch.Tensor) -> None:
        """After every step of the block [lo, hi); settled (B, hi - lo): slots that held final tokens."""


@dataclass
class Periodic(Refresh):
    """A full refresh every `every` steps inside a block (the fixed-interval refresh of dLLM-Cache, Liu et al. 2025)."""

    every: int

    def periodic(self, step: int) -> bool:
        return step % self.every == 0


@dataclass
class DriftRefresh(Refresh):
    """Elastic-Cache (Nguyen-Tri et al. 2025): refresh when the most-attended settled key drifted past `bound`."""

    bound: float
    layer: int  # the first layer whose drift is tested
    probes: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self.hot: torch.Tensor | None = None  # per row: the most-attended settled slot of the last step

    def start(self) -> None:
        self.hot = None

    def start_block(self, lo: int) -> None:
        self.hot = None

    def stale(self, probe: Probe | None) -> bool:
        """Elastic-Cache's test, on the keys this step just overwrote: did the last hot token move too far?"""
        if self.hot is None:
            return False
        rows = torch.arange(self.hot.shape[0])
        worst = 0.0
        for layer, drift in probe.drift.items():
            if layer >= self.layer:
                worst = max(worst, float(drift[rows, self.hot - probe.start].max()))
        return worst > self.bound

    def observe(self, probe: Probe | None, lo: int, hi: int, settled: torch.Tensor) -> None:
        """Remember the most-attended settled slot in [lo, hi) (none while a row has no settled slot)."""
        mass = probe.attention[:, lo:hi].masked_fill(~settled, -1.0)
        hot = mass.argmax(dim=-1)
        self.hot = (hot + lo) if bool(settled.any(dim=-1).all()) else None


@dataclass
class DelayedCaching(Refresh):
    """dKV-Cache's delayed caching (Ma et al. 2025): a block start recomputes from the previous block onward."""

    def __post_init__(self) -> None:
        self.previous: int | None = None  # start slot of the block before the current one
        self.current: int | None = None

    def start(self) -> None:
        self.previous = self.current = None

    def start_block(self, lo: int) -> None:
        self.previous, self.current = self.current, lo

    def first_pass_start(self) -> int:
        return 0 if self.previous is None else self.previous
