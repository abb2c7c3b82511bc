"""FORA: Fast-Forward Caching in Diffusion Transformer Acceleration (Selvaraju et al., 2024).

FORA computes the attention and MLP outputs of every layer once every N steps and reuses them in
between. Reusing every layer's (gated) branch outputs adds the same total to the hidden state as
reusing the whole stack's residual (output - input), which is what is cached here: one tensor per
carried stream instead of two per layer. Warm-up steps and the schedule's final step always compute.
"""

from __future__ import annotations

from dataclasses import dataclass

from stretto.cache.hidden import Hidden
from stretto.cache.policy import CachePolicy, bounded, register
from stretto.cache.stack import Call, Stack


@register
@dataclass
class FORA(CachePolicy):
    """Compute the stack every `interval` steps after `warmup` full steps; reuse its residual in between."""

    name = "fora"
    step_only = True
    interval: int = bounded(2, 1, 1000, "compute every N-th step")
    warmup: int = bounded(1, 0, 1000, "full steps at the start")
    final: bool = bounded(True, 0, 1, "always compute the schedule's final step")

    def run(self, stack: Stack, h: Hidden, call: Call) -> Hidden:
        since = call.index - self.warmup
        compute = (since < 0) | (since % self.interval == 0)
        if self.final:
            compute |= call.final
        return stack.compute_or_reuse(h, 0, stack.num_blocks, compute, call.state, "residual")
