"""Ulysses sequence parallelism (DeepSpeed-Ulysses, Jacobs et al. 2023) through diffusers' context-parallel hooks.

Each rank holds a slice of the image and text tokens; around attention an all-to-all trades the token
slice for a head slice, so attention sees every token for its heads. diffusers does the splitting, the
all-to-all and the final gather (`enable_parallelism` with the model's `_cp_plan`); stretto only steps
around its one CPU-host crash.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from stretto.parallel.group import world_size


@contextmanager
def _cpu_counts_as_one_device() -> Iterator[None]:
    """diffusers places rank r on device r % torch.accelerator.device_count(), which is 0 on a CPU-only host."""
    if torch._C._get_accelerator().type != "cpu":
        yield
        return
    count = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = count


def enable_ulysses(transformer: nn.Module) -> None:
    """Shard `transformer`'s sequence over every rank of the group (once; later calls keep it)."""
    if getattr(transformer, "_cp_plan", None) is None:
        raise ValueError(
            f"{type(transformer).__name__} has no diffusers context-parallel plan (_cp_plan); Ulysses runs on "
            "diffusers transformers that have one (Flux, Wan, QwenImage, LTX, ...)"
        )
    if transformer._parallel_config is not None:
        return
    heads, degree = transformer.config.num_attention_heads, world_size()
    if heads % degree:
        raise ValueError(f"Ulysses needs the {heads} attention heads divisible by the world size, got {degree}")
    from diffusers import ContextParallelConfig

    with _cpu_counts_as_one_device():
        transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=degree))
