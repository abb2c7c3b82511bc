"""all_gather of one equal-shape tensor per rank, counting the bytes it moves."""

from __future__ import annotations

import torch
import torch.distributed as dist


class AllGather:
    """Gather every rank's tensor (same shape on all) into a list in rank order; `bytes` counts what arrived."""

    def __init__(self) -> None:
        self.bytes = 0  # total size of the gathered lists: per call world_size x the tensor's bytes
        self.calls = 0

    def __call__(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        self.bytes += sum(p.numel() * p.element_size() for p in parts)
        self.calls += 1
        return parts
