"""Always compute: the reference every cache policy is measured against (output bit-identical to no cache)."""

from __future__ import annotations

from dataclasses import dataclass

from stretto.cache.hidden import Hidden
from stretto.cache.policy import CachePolicy, register
from stretto.cache.stack import Call, Stack


@register
@dataclass
class NoCache(CachePolicy):
    """Run every block on every call."""

    name = "none"
    step_only = True

    def run(self, stack: Stack, h: Hidden, call: Call) -> Hidden:
        return stack.compute(h, 0, stack.num_blocks)
