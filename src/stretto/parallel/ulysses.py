"""Ulysses sequence parallelism (DeepSpeed-Ulysses, Jacobs et al. 2023): diffusers' hooks, or stretto's own shard.

Each rank holds a slice of the tokens; around attention an all-to-all trades the token slice for a head
slice, so attention sees every token for its heads, and a second one trades back. Two ways in:
- a diffusers transformer (`enable_ulysses`): diffusers does the splitting, the all-to-all and the final
  gather (`enable_parallelism` with the model's `_cp_plan`); stretto only steps around its one CPU-host crash;
- a model stretto calls itself (the world model's block-causal DiT): the model takes a `UlyssesShard`, which
  slices its tokens, exchanges them around its attention and gathers its output. Inference only: the
  collectives here carry no gradients.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn

from stretto.parallel.all_to_all import AllToAll
from stretto.parallel.gather import AllGather
from stretto.parallel.group import rank, world_size


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


class UlyssesShard:
    """This rank's share of one sequence: a contiguous token slice outside attention, a head slice inside it.

    Tokens [r n / world, (r + 1) n / world) of every call live on rank r (`local`, `spread`); `to_heads` turns
    (..., H, n / world, D) into (..., H / world, n, D), heads [r H / world, (r + 1) H / world) for every token in
    order, so attention (and a KV cache of H / world heads) runs as on one process; `to_tokens` trades back and
    `gather` joins the token slices. `bytes` counts what the collectives moved.
    """

    def __init__(self) -> None:
        if not dist.is_initialized():
            raise ValueError(
                "Ulysses needs a process group: launch with torchrun --nproc-per-node 2, then stretto.parallel.init()"
            )
        self.rank, self.size = rank(), world_size()
        self.exchange, self.join = AllToAll(), AllGather()

    @property
    def bytes(self) -> int:
        return self.exchange.bytes + self.join.bytes

    def heads(self, n_head: int) -> int:
        """Heads each rank attends with (and caches K/V for)."""
        if n_head % self.size:
            raise ValueError(f"Ulysses needs the {n_head} attention heads divisible by the world size, got {self.size}")
        return n_head // self.size

    def bounds(self, n: int) -> tuple[int, int]:
        """This rank's token range [lo, hi) of n tokens."""
        if n % self.size:
            raise ValueError(f"Ulysses splits a call's {n} tokens over {self.size} ranks: not divisible")
        per = n // self.size
        return self.rank * per, (self.rank + 1) * per

    def local(self, tokens: torch.Tensor) -> torch.Tensor:
        """This rank's slice of tokens (B, n, ...)."""
        lo, hi = self.bounds(tokens.shape[1])
        return tokens[:, lo:hi]

    def spread(self, groups: torch.Tensor, repeats: int) -> torch.Tensor:
        """This rank's slice of `groups` (B, G, ...) with each repeated `repeats` times (per-frame values to tokens),
        repeating only the groups the slice touches."""
        lo, hi = self.bounds(groups.shape[1] * repeats)
        first, last = lo // repeats, -(-hi // repeats)
        return groups[:, first:last].repeat_interleave(repeats, dim=1)[:, lo - first * repeats : hi - first * repeats]

    def to_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(..., H, n / world, D) -> (..., H / world, n, D): every rank's tokens, this rank's heads."""
        return self.exchange(x, scatter_dim=-3, gather_dim=-2)

    def to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(..., H / world, n, D) -> (..., H, n / world, D): every head, this rank's tokens."""
        return self.exchange(x, scatter_dim=-2, gather_dim=-3)

    def gather(self, tokens: torch.Tensor) -> torch.Tensor:
        """Every rank's slice of tokens (B, n / world, ...) joined in order: the same (B, n, ...) on every rank."""
        return torch.cat(self.join(tokens), dim=1)
