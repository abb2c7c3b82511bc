"""all_to_all of one tensor: split it along one dim, piece j to rank j, join the pieces received along another."""

from __future__ import annotations

import torch
import torch.distributed as dist


class AllToAll:
    """Ulysses' exchange (DeepSpeed-Ulysses, Jacobs et al. 2023): scatter one dim over the ranks, gather another.

    `exchange(x, scatter_dim=1, gather_dim=2)` on (B, H, n, D) with n tokens per rank returns (B, H / world,
    n * world, D): this rank's share of the heads for every rank's tokens, in rank order. `bytes` counts the
    tensors exchanged (per call the size of x: the own piece included, as AllGather counts its whole list).
    """

    def __init__(self) -> None:
        self.bytes = 0
        self.calls = 0

    def __call__(self, x: torch.Tensor, scatter_dim: int, gather_dim: int) -> torch.Tensor:
        world = dist.get_world_size()
        if x.shape[scatter_dim] % world:
            raise ValueError(f"all_to_all splits dim {scatter_dim} of size {x.shape[scatter_dim]} over {world} ranks")
        send = torch.stack(x.chunk(world, scatter_dim)).contiguous()  # send[j] goes to rank j
        received = torch.empty_like(send)
        dist.all_to_all_single(received, send)  # received[i] came from rank i
        self.bytes += send.numel() * send.element_size()
        self.calls += 1
        return torch.cat(received.unbind(0), gather_dim)
