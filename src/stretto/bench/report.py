"""A description of the machine a benchmark ran on, stored next to its numbers, and writing the result."""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

import torch


def describe_machine(device: torch.device | str = "cpu") -> dict:
    """CPU model, core count, memory, torch version, threads and accelerator: enough to compare runs."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        mem_gib = None
    device = torch.device(device)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1) if mem_gib else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "note": "fp32; shared, noisy machine: compare speeds as ratios within one run",
    }


def write_json(result: dict, path: str | Path) -> Path:
    """Write a benchmark result as indented JSON, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
