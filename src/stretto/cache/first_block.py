"""First-Block-Cache (ParaAttention, after TeaCache: Liu et al., "Timestep Embedding Tells: It's Time to Cache
for Video Diffusion Model", 2024) and its generalisation DBCache ("Dual Block Cache", the cache-dit project).

DBCache always computes the first `first` blocks (Fn) and the last `last` blocks (Bn). The change of the
image-token residual after the first blocks, relative L1 mean|r - r_prev| / mean|r_prev| against the
last step on which the middle was computed, says whether the middle blocks may be skipped: below
`threshold` their cached residual is added instead; the last blocks then correct the result. Decisions
are per sample; `joint=true` takes one decision for the whole call from the batch's mean change, as
cache-dit does (with CFG in one batch, both branches are then always computed or skipped together, so the
guidance difference never mixes a fresh branch with a stale one). First-Block-Cache is DBCache with first=1,
last=0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stretto.cache.hidden import Hidden
from stretto.cache.policy import CachePolicy, bounded, register
from stretto.cache.stack import Call, Stack


@register
@dataclass
class DBCache(CachePolicy):
    """Compute the first and last blocks; skip the middle while the first blocks' residual barely changes."""

    name = "dbcache"
    first: int = bounded(8, 1, 10_000, "blocks always computed at the front (Fn)")
    last: int = bounded(0, 0, 10_000, "blocks always computed at the back (Bn)")
    threshold: float = bounded(0.08, 0.0, 10.0, "skip the middle when the relative L1 change is below this")
    warmup: int = bounded(8, 0, 10_000, "full steps at the start")
    max_cached: int = bounded(0, 0, 10_000, "cap on consecutive cached steps (0: no cap)")
    joint: bool = bounded(False, 0, 1, "one decision for all rows, from the batch's mean change (cache-dit's)")

    def check_stack(self, num_blocks: int) -> None:
        if self.first + self.last >= num_blocks:
            raise ValueError(
                f"{type(self).__name__}.first + last must be below the number of blocks ({num_blocks}) so that "
                f"some blocks can be skipped, got first={self.first}, last={self.last}"
            )

    def run(self, stack: Stack, h: Hidden, call: Call) -> Hidden:
        n, stop, state = self.first, stack.num_blocks - self.last, call.state
        h1 = stack.compute(h, 0, n)
        r = stack.main(h1) - stack.main(h)
        prev = state.get("first_residual")
        if prev is None or state.get("middle_residual") is None:
            compute = torch.ones_like(call.index, dtype=torch.bool)
            cached_run = torch.zeros_like(call.index)
        else:
            if self.joint:
                change = ((r - prev).abs().mean() / prev.abs().mean()).expand(r.shape[0])
            else:
                change = (r - prev).abs().flatten(1).mean(1) / prev.abs().flatten(1).mean(1)
            cached_run = state["cached_run"]
            compute = ~(change < self.threshold) | (call.index < self.warmup) | call.fresh  # NaN change: compute
            if self.max_cached:
                compute |= cached_run >= self.max_cached
            if self.joint:
                compute = compute.any().expand_as(compute)
        h2 = stack.compute_or_reuse(h1, n, stop, compute, state, "middle_residual")
        keep = compute.reshape(-1, *([1] * (r.ndim - 1)))
        state["first_residual"] = r if prev is None else torch.where(keep, r, prev)
        state["cached_run"] = torch.where(compute, 0, cached_run + 1)
        return stack.compute(h2, stop, stack.num_blocks)


@register
@dataclass
class FirstBlock(DBCache):
    """First-Block-Cache: compute block 0; skip all others while its residual barely changes."""

    name = "firstblock"
    first: int = bounded(1, 1, 10_000, "blocks always computed at the front")
    last: int = bounded(0, 0, 10_000, "blocks always computed at the back")
    threshold: float = bounded(0.08, 0.0, 10.0, "skip when the relative L1 change is below this")
    warmup: int = bounded(0, 0, 10_000, "full steps at the start")
    max_cached: int = bounded(0, 0, 10_000, "cap on consecutive cached steps (0: no cap)")
