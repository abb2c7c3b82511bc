"""What every benchmark shares: the machine description stored with its numbers, the JSON writer, the text table,
the figure set-up."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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


Columns = Sequence[tuple[str, str | Callable[[dict], Any], str]]


def table_header(columns: Columns) -> str:
    """The header line of a text table; a column is (header, row key or function of the row, format spec).

    The spec is a Python format spec such as ">7.2f" or "<20"; the header takes its alignment and width.
    """
    return " ".join(f"{head:{re.match(r'[<>^]?[0-9]*', spec).group(0)}}" for head, _, spec in columns).rstrip()


def table_row(row: dict, columns: Columns) -> str:
    """One row of a text table (see `table_header`)."""
    return " ".join(f"{key(row) if callable(key) else row[key]:{spec}}" for _, key, spec in columns).rstrip()


def format_table(rows: Sequence[dict], columns: Columns) -> str:
    """Rows as a fixed-width text table under its header."""
    return "\n".join([table_header(columns)] + [table_row(r, columns) for r in rows])


def print_table(rows: Sequence[dict], columns: Columns) -> None:
    """Print `format_table(rows, columns)`."""
    print(format_table(rows, columns))


def new_figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (8, 5)):
    """A matplotlib figure on the file-only Agg backend (no display here); returns (plt, fig, axes (nrows, ncols))."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False)
    return plt, fig, axes


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Lay out, write (creating the folder) and close a figure."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
