"""DeepCache: "DeepCache: Accelerating Diffusion Models for Free" (Ma, Fang, Wang, CVPR 2024).

In a UNet the deep blocks' output changes slowly between adjacent steps, while the skip connections of the
shallow blocks carry the fine detail. DeepCache runs the whole UNet every `interval` steps and stores what
the deep part hands to the shallow up blocks; on the steps in between only the shallow branch runs (the
first `depth` down blocks and the last `depth` up blocks, so depth 1 keeps the outermost level) and the
stored deep features stand in for the rest. The paper's uniform schedule; `warmup` early steps run fully.
The mechanism that swaps the UNet's blocks is stretto.cache.unet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from stretto.cache.hidden import Hidden
from stretto.cache.policy import CachePolicy, bounded, register
from stretto.cache.stack import Call, Stack


@register
@dataclass
class DeepCache(CachePolicy):
    """Run the whole UNet every `interval` steps; in between only its `depth` outermost levels."""

    name = "deepcache"
    unet: ClassVar[bool] = True
    interval: int = bounded(3, 1, 1000, "run the whole UNet every N-th step")
    depth: int = bounded(1, 1, 100, "UNet levels (down and up blocks) that always run, from the outside in")
    warmup: int = bounded(1, 0, 1000, "full steps at the start")

    def full(self, index: int) -> bool:
        """Whether step `index` runs the whole UNet."""
        since = index - self.warmup
        return since < 0 or since % self.interval == 0

    def run(self, stack: Stack, h: Hidden, call: Call) -> Hidden:
        raise ValueError(f"deepcache runs on UNets (UNet2DModel, UNet2DConditionModel), not on {stack.model}")
