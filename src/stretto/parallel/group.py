"""The process group of one generation: started from torchrun's environment, gloo on CPU, NCCL on CUDA."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init(device: torch.device | str = "cpu") -> torch.device:
    """Join the process group torchrun describes (once); return this rank's device (cuda -> cuda:LOCAL_RANK)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if dist.is_initialized():
        return device
    if "WORLD_SIZE" not in os.environ:
        raise ValueError(
            "no process group: WORLD_SIZE is not set; launch with torchrun --nproc-per-node 2 -m stretto.cli ..."
        )
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"multi-process generation runs on cpu (gloo) or cuda (nccl), got device {str(device)!r}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def world_size() -> int:
    """Processes in the group; 1 when none was started."""
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    """This process's rank; 0 when no group was started."""
    return dist.get_rank() if dist.is_initialized() else 0


def finish() -> None:
    """Leave the process group (a no-op without one)."""
    if dist.is_initialized():
        dist.destroy_process_group()
