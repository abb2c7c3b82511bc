"""torch.compile for a cached model: compile each block of the stack, not the whole model.

The cache's decisions are Python control flow over tensors (rows or tokens that compute are gathered with
`nonzero`, a schedule's scale is checked with a host sync), and its per-generation state (step counts,
stored residuals per branch) lives in Python objects that dynamo guards on. Compiled whole, the shipped
Flux under FORA breaks its graph at every such point (5 `.item()`, 7 `nonzero`, 1 data-dependent branch)
and keeps compiling new graphs as generations run more steps (26 graphs after a 4-step generation, 37
after an 8-step one). Its blocks, by contrast, are called as modules with the same arguments every step:
compiled one by one they give one graph per block kind, plus one with a dynamic dimension for policies
that run subsets of rows or tokens, and no recompile after that, whatever the step count.
"""

from __future__ import annotations

from torch import nn

from stretto.cache.block_list import find_stack


def compile_blocks(model: nn.Module, **options) -> list[nn.Module]:
    """Compile every block of `model`'s stack in place (`nn.Module.compile(**options)`, e.g. backend=, mode=),
    with or without a cache applied; returns the blocks. Apply and remove caches freely afterwards."""
    # a cache's swapped lists hold the same block modules and iterate over them outside the model's forward
    blocks = [b for owner, name in find_stack(model, None) for b in getattr(owner, name)]
    for block in blocks:
        block.compile(**options)
    return blocks
