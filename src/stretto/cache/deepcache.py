"""DeepCache: "DeepCache: Accelerating Diffusion Models for Free" (Ma, Fang, Wang, CVPR 2024).

In a UNet the deep blocks' output changes slowly between adjacent steps, while the skip connections of the
shallow blocks carry the fine detail. DeepCache runs the whole UNet every `interval` steps and stores what
the deep part hands to the shallow up blocks; on the steps in between only the shallow branch runs (the
first `depth` down blocks and the last `depth` up blocks, so depth 1 keeps the outermost level) and the
stored deep features stand in for the rest. The paper's uniform schedule; `warmup` early steps run fully.
The mechanism that swaps the UNet's blocks is stretto.cache.unet (shared with Faster Diffusion).
"""

from __future__ import annotations

from dataclasses import dataclass

from stretto.cache.policy import UNetPolicy, bounded, register


@register
@dataclass
class DeepCache(UNetPolicy):
    """Run the whole UNet every `interval` steps; in between only its `depth` outermost levels."""

    name = "deepcache"
    interval: int = bounded(3, 1, 1000, "run the whole UNet every N-th step")
    depth: int = bounded(1, 1, 100, "UNet levels (down and up blocks) that always run, from the outside in")
    warmup: int = bounded(1, 0, 1000, "full steps at the start")

    def kept_levels(self, down: int, up: int, model: str) -> tuple[int, int]:
        if self.depth >= min(down, up):
            raise ValueError(
                f"DeepCache.depth must be below the number of UNet levels of {model} ({min(down, up)}) "
                f"so that some blocks can be reused, got {self.depth}"
            )
        return self.depth, self.depth

    def full(self, index: int) -> bool:
        since = index - self.warmup
        return since < 0 or since % self.interval == 0
