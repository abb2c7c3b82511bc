"""Which step a model call belongs to: what the caller says about it, and each row's step index.

The caller names the call's sigma and CFG branches with `stretto.cache.step(...)` (or, on a diffusers
model, the pipeline's `cache_context`, see diffusers_bridge.py); without a sigma the model call's
`timestep` argument is used. A row's step index comes from the generation's schedule (given to
`stretto.cache.reset`) by sigma, else from the caller, else from counting the branch's earlier calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class StepContext:
    """What the caller says about one model call: the noise level and which row chunk is which CFG branch."""

    sigma: float | torch.Tensor | None  # None: take the `timestep` argument of the model call
    branches: tuple[str, ...] = ("cond",)
    index: int | None = None  # the step's index, when the caller knows it and gave reset() no schedule
    final: bool | None = None  # whether it is the last step (same condition)


def sigma_schedule(sigmas: torch.Tensor | Sequence[float], keep_zero: bool = False) -> torch.Tensor:
    """A generation's schedule as step_index reads it: its distinct positive sigmas, largest first. A sampler's
    sigmas end at 0, where the model is not called; `keep_zero` keeps it (a scheduler's timesteps, each one a
    model call, may end at t = 0)."""
    s = torch.as_tensor(sigmas, dtype=torch.float32).flatten()
    s = s[s >= 0] if keep_zero else s[s > 0]
    return s.unique().sort(descending=True).values


def step_index(
    sigma: torch.Tensor,
    ctx: StepContext,
    schedule: torch.Tensor | None,
    counted: dict[str, int],
    branches: tuple[str, ...],
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's step index and whether it is the final step: from the schedule by sigma (an evaluation
    between sigma_i and sigma_i+1 belongs to step i; one at 0, below a schedule without 0, is the step after
    its last), else as the caller said, else by counting the branch's earlier calls (`counted`, one per call)."""
    batch, device = sigma.shape[0], sigma.device
    if schedule is not None:
        schedule = schedule.to(device)
        index = (schedule[None, :] >= sigma[:, None] * (1 - 1e-5)).sum(1).clamp(min=1) - 1
        if len(schedule) and schedule[-1] > 0:  # a call at 0 after the schedule's last sigma (DDIM's t = 0) is a step
            index = torch.where(sigma <= 0, len(schedule), index)
        return index, index >= len(schedule) - 1
    final = torch.full((batch,), bool(ctx.final), dtype=torch.bool, device=device)
    if ctx.index is not None:
        return torch.full((batch,), ctx.index, device=device), final
    index = torch.tensor([counted.get(b, 0) for b in branches], device=device).repeat_interleave(chunk)
    return index, final


def check_scale(schedule: torch.Tensor, sigma: torch.Tensor, model: str, timestep: str = "timestep") -> None:
    """Raise if a denoising loop's first call lies above the schedule's top or 100x below it: the schedule given
    to reset() is in another scale than the model's timestep, and keying steps on it would go wrong silently."""
    top = float(schedule[0]) if schedule.numel() else 0.0
    high = float(sigma.max())
    if high > top * (1 + 1e-3) + 1e-6 or high * 100 < top:
        raise ValueError(
            f"{model} was called at noise level {high:g} but the step schedule runs from {top:g}: give reset() the "
            f"schedule in the scale of the model's `{timestep}` (e.g. 0..1 for Flux, 0..1000 for SD3 / DiT / Wan)"
        )
