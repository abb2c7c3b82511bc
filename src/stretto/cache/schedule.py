"""An explicit cache schedule: a steps x blocks mask of compute / reuse, as found by ECAD's search.

ECAD ("Evolutionary Caching to Accelerate Your Off-the-Shelf Diffusion Model", Aggarwal et al., 2025)
searches, with a genetic algorithm (NSGA-II), binary schedules that say for every step and block whether
to compute it or reuse its cached output, and keeps the Pareto front of quality vs compute. This policy
runs one such schedule; `stretto.tune.search` is the search.

Mask text: one group per step separated by "/", one character per block, "1" compute, "0" reuse, e.g.
"111111/100001/111111". Steps beyond the mask compute every block. A reused block adds its own residual
(output - input) from the last step it was computed for that row; a run of consecutive reused blocks adds
the sum of their residuals in one jump (no call per skipped block). Decisions are per row, by each row's
step index. A row without stored state, or a block not computed yet, computes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stretto.cache.hidden import Hidden, add, put, sub, take
from stretto.cache.policy import CachePolicy, bounded, register
from stretto.cache.stack import Call, Stack

PATTERN_HELP = "one group of '1' (compute) / '0' (reuse) per block for each step, steps separated by '/'"


def parse_pattern(text: str) -> torch.Tensor:
    """Mask text ("111/101/...") -> a (steps, blocks) bool tensor; ValueError naming what is wrong."""
    text = text.strip()
    if not text:
        raise ValueError(f"Schedule.pattern is empty; give {PATTERN_HELP}, e.g. '111111/100001'")
    groups = [g.strip() for g in text.split("/")]
    for i, g in enumerate(groups):
        if not g:
            raise ValueError(f"Schedule.pattern has an empty group at step {i}; give {PATTERN_HELP}")
        bad = sorted(set(g) - {"0", "1"})
        if bad:
            raise ValueError(f"Schedule.pattern may only hold '0', '1' and '/'; step {i} ({g!r}) has {''.join(bad)!r}")
    widths = [len(g) for g in groups]
    if len(set(widths)) != 1:
        i = next(i for i, w in enumerate(widths) if w != widths[0])
        raise ValueError(
            f"every step of Schedule.pattern needs the same number of blocks: step 0 has {widths[0]}, "
            f"step {i} has {widths[i]}"
        )
    return torch.tensor([[c == "1" for c in g] for g in groups], dtype=torch.bool)


def format_pattern(mask: torch.Tensor) -> str:
    """A (steps, blocks) bool mask as mask text ("111/101/...")."""
    return "/".join("".join("1" if b else "0" for b in row) for row in mask.tolist())


def _value(member: Any, key: str) -> float:
    value = member.get(key) if isinstance(member, dict) else getattr(member, key)
    return math.inf if value is None else float(value)  # a null PSNR is the identical, full-compute image


def pick(front: Sequence[Any], min_psnr: float) -> Any:
    """The cheapest front member (Candidate or JSON dict) whose PSNR is at least `min_psnr` dB."""
    if not front:
        raise ValueError("the front is empty; nothing to pick from")
    fits = [m for m in front if _value(m, "psnr_db") >= min_psnr]
    if not fits:
        best = max(front, key=lambda m: _value(m, "psnr_db"))
        raise ValueError(
            f"no front member reaches {min_psnr:g} dB PSNR; the best available is "
            f"{_value(best, 'psnr_db'):.2f} dB (compute fraction {_value(best, 'compute_fraction'):.3f})"
        )
    return min(fits, key=lambda m: (_value(m, "compute_fraction"), -_value(m, "psnr_db")))


def _pattern_from_file(path: str, min_psnr: float) -> str:
    """The mask of the cheapest member of a saved search front with PSNR >= min_psnr."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as err:
        raise ValueError(f"Schedule.file: cannot read {path!r} ({err.strerror or err})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"Schedule.file: {path!r} is not JSON ({err})") from None
    front = data.get("front") if isinstance(data, dict) else data
    if not isinstance(front, list) or not all(isinstance(m, dict) and "mask" in m for m in front):
        raise ValueError(
            f"Schedule.file: {path!r} holds no search front (a 'front' list of members with a 'mask'); "
            "write one with `stretto search cache`"
        )
    return pick(front, min_psnr)["mask"]


@register
@dataclass
class Schedule(CachePolicy):
    """Compute or reuse each block at each step exactly as an explicit steps x blocks mask says (ECAD)."""

    name = "schedule"
    pattern: str = field(default="", metadata={"doc": f"the mask: {PATTERN_HELP}"})
    file: str = field(default="", metadata={"doc": "a saved search front (stretto search cache) to pick from"})
    min_psnr: float = bounded(0.0, 0.0, 1000.0, "with file: the cheapest front member with at least this PSNR, dB")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.file and self.pattern:
            raise ValueError("give Schedule.pattern or Schedule.file (with min_psnr), not both")
        if self.file:
            if not self.min_psnr > 0:
                raise ValueError(f"Schedule.file needs min_psnr > 0 (dB), e.g. schedule:file={self.file},min_psnr=30")
            pattern = _pattern_from_file(self.file, self.min_psnr)
        elif self.pattern:
            pattern = self.pattern
        else:
            raise ValueError(
                f"Schedule needs pattern= ({PATTERN_HELP}, e.g. '111111/100001') "
                "or file=FRONT.json,min_psnr=DB (a front saved by `stretto search cache`)"
            )
        self._mask = parse_pattern(pattern)
        self._kept = (~self._mask).any(0).tolist()  # blocks reused at some step: their residuals are stored

    @classmethod
    def from_mask(cls, mask: torch.Tensor | Sequence[Sequence[int | bool]]) -> Schedule:
        """A schedule from a (steps, blocks) mask of 1 / True (compute) and 0 / False (reuse)."""
        t = torch.as_tensor(mask)
        if t.ndim != 2 or t.numel() == 0:
            raise ValueError(f"Schedule.from_mask needs a non-empty (steps, blocks) mask, got shape {tuple(t.shape)}")
        if t.dtype != torch.bool:
            if not bool(((t == 0) | (t == 1)).all()):
                raise ValueError("Schedule.from_mask needs a mask of 0 / 1 or False / True values")
            t = t != 0
        return cls(pattern=format_pattern(t))

    @property
    def mask(self) -> torch.Tensor:
        """The (steps, blocks) bool mask: True computes the block at that step, False reuses it."""
        return self._mask.clone()

    def describe(self) -> str:
        return f"{self.name}:pattern={format_pattern(self._mask)}"

    def check_stack(self, num_blocks: int) -> None:
        width = self._mask.shape[1]
        if width != num_blocks:
            raise ValueError(
                f"the schedule's mask has {width} blocks per step but the model's block stack has {num_blocks}; "
                f"give {num_blocks} characters per step"
            )

    def run(self, stack: Stack, h: Hidden, call: Call) -> Hidden:
        decide = self._decisions(stack.num_blocks, call)
        columns = [tuple(c) for c in decide.t().tolist()]
        start = 0
        while start < stack.num_blocks:  # runs of consecutive blocks with the same decision for every row
            stop = start + 1
            while stop < stack.num_blocks and columns[stop] == columns[start]:
                stop += 1
            h = self._run_range(stack, h, start, stop, decide[:, start], call)
            start = stop
        return h

    def _decisions(self, num_blocks: int, call: Call) -> torch.Tensor:
        """(rows, blocks) bool on the CPU: which rows compute which blocks at this call (one host sync)."""
        index, fresh = call.index.cpu(), call.fresh.cpu()
        decide = torch.ones(index.shape[0], num_blocks, dtype=torch.bool)
        inside = (index >= 0) & (index < self._mask.shape[0])
        decide[inside] = self._mask[index[inside]]
        decide[fresh] = True
        for b in range(num_blocks):
            if self._kept[b] and f"r{b}" not in call.state:
                decide[:, b] = True  # never computed yet: no residual to reuse
        return decide

    def _run_range(self, stack: Stack, h: Hidden, start: int, stop: int, compute: torch.Tensor, call: Call) -> Hidden:
        state, device = call.state, call.index.device
        if bool(compute.all()):
            for b in range(start, stop):
                h = self._compute_block(stack, h, b, state)
            return h
        jump = self._jump(state, start, stop)
        if not bool(compute.any()):
            stack.count("reused", start, stop)
            return add(h, jump)
        run = compute.nonzero().flatten().to(device)
        skip = (~compute).nonzero().flatten().to(device)
        h_run = take(h, run)
        for b in range(start, stop):
            h_run = self._compute_block(stack, h_run, b, state, run)
        stack.count("reused", start, stop, skip)
        return put(add(h, jump), run, h_run)

    @staticmethod
    def _jump(state: dict, start: int, stop: int) -> Hidden:
        """The summed residuals of blocks [start, stop), kept until one of them is recomputed: a mask reuses
        the same runs of blocks step after step, and summing them again each time costs as much as the
        reuse itself."""
        key = f"j{start}:{stop}"
        if key not in state:
            jump = state[f"r{start}"]
            for b in range(start + 1, stop):
                jump = add(jump, state[f"r{b}"])
            state[key] = jump
        return state[key]

    def _compute_block(self, stack: Stack, h: Hidden, b: int, state: dict, rows: torch.Tensor | None = None) -> Hidden:
        out = stack.compute(h, b, b + 1, rows)
        if self._kept[b]:
            residual = sub(out, h)
            state[f"r{b}"] = residual if rows is None else put(state[f"r{b}"], rows, residual)
            for key in [k for k in state if k.startswith("j") and _in_run(k, b)]:
                del state[key]  # a sum over this block's old residual
        return out


def _in_run(key: str, b: int) -> bool:
    """Whether block b is in the run of a summed-residual key "j{start}:{stop}"."""
    start, stop = key[1:].split(":")
    return int(start) <= b < int(stop)
