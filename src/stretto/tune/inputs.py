"""What calibration and schedule search share: default sampling, checked settings, model and prompts, outputs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

import stretto
from stretto.bench.report import write_json
from stretto.data.shapes import evaluation_prompts
from stretto.models.shapes_flux import ShapesFlux
from stretto.pipelines.image import check_settings

# The cache benchmark's main setup (euler:50, guidance 3): MagCache's ratios and a searched schedule are per step
# index, so they apply as they are only at the step count they were tuned at.
TUNING_STEPS = 50
TUNING_SAMPLER = "euler"
TUNING_GUIDANCE = 3.0


def load_inputs(
    model: str,
    device: str | torch.device,
    num_prompts: int,
    steps: int,
    sampler: str,
    guidance: float,
    prompt_seed: int | None = None,
) -> tuple[ShapesFlux, list[str]]:
    """Check the settings (before any loading), then the text-to-image model by name and `num_prompts` prompts."""
    if not isinstance(num_prompts, int) or isinstance(num_prompts, bool) or num_prompts < 1:
        raise ValueError(f"num_prompts must be an integer >= 1, got {num_prompts!r}")
    check_settings(steps, sampler, guidance, 1.0)
    net = stretto.load(model, device=device, kind=ShapesFlux.kind)
    if prompt_seed is None:
        return net, evaluation_prompts(num_prompts)
    return net, evaluation_prompts(num_prompts, seed=prompt_seed)


def record(
    result: dict,
    json_path: str | Path | None,
    plot_path: str | Path | None,
    plot: Callable[[dict, str | Path], None],
) -> dict:
    """Write `result` as JSON and draw its figure, each only where a path is given; returns `result`."""
    if json_path:
        write_json(result, json_path)
    if plot_path:
        plot(result, plot_path)
    return result
