"""Delta-DiT: "Δ-DiT: A Training-Free Acceleration Method Tailored for Diffusion Transformers" (Chen et al., 2024).

Delta-Cache stores the deviation (output - input) of a range of blocks and adds it back on the steps in
between, so the blocks around the range still see the current input. Rear blocks shape details and
front blocks the outline, so the rear range is cached early in sampling (sigma above `boundary`) and
the front range late (sigma at or below it). The paper's boundary is a step index; here it is a sigma.
"""

from __future__ import annotations

from dataclasses import dataclass

from stretto.cache.hidden import Hidden, split
from stretto.cache.policy import CachePolicy, bounded, register
from stretto.cache.stack import Call, Stack


@register
@dataclass
class DeltaDiT(CachePolicy):
    """Reuse the deviation of the rear `cached` blocks while sigma > boundary, of the front ones after."""

    name = "delta"
    cached: int = bounded(2, 1, 10_000, "blocks in the cached range")
    interval: int = bounded(2, 1, 1000, "compute the range every N-th step")
    warmup: int = bounded(1, 0, 1000, "full steps at the start")
    boundary: float = bounded(0.5, 0.0, 1e6, "sigma above which the rear range is cached, at or below the front")

    def check_stack(self, num_blocks: int) -> None:
        if self.cached >= num_blocks:
            raise ValueError(f"DeltaDiT.cached must be below the number of blocks ({num_blocks}), got {self.cached}")

    def run(self, stack: Stack, h: Hidden, call: Call) -> Hidden:
        n, k = stack.num_blocks, self.cached
        since = call.index - self.warmup
        compute = (since < 0) | (since % self.interval == 0)
        early, late = split(call.sigma > self.boundary)
        if early is not None and late is not None:  # rows in different phases (unusual): compute them all
            return stack.compute(h, 0, n)
        if late is None:  # outline phase: cache the rear blocks
            h = stack.compute(h, 0, n - k)
            return stack.compute_or_reuse(h, n - k, n, compute, call.state, "rear")
        h = stack.compute_or_reuse(h, 0, k, compute, call.state, "front")
        return stack.compute(h, k, n)
