"""Flow-matching samplers as plain functions: `sample_x(denoiser, x, sigmas, callback=None) -> x`.

A denoiser is any `denoiser(x, sigma) -> v` (see `contract.py`); samplers never see models, prompts,
guidance or caches. `sigmas` runs from high noise to (usually) exactly 0, e.g. `flow_sigmas(steps, shift)`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from stretto.sampling.contract import Callback, Denoiser
from stretto.sampling.dpm_solver import sample_dpmpp_2m
from stretto.sampling.euler import sample_euler
from stretto.sampling.heun import sample_heun
from stretto.sampling.schedules import flow_lambda, flow_sigmas, shift_sigmas
from stretto.sampling.time_shift import TimeShiftedDenoiser
from stretto.sampling.unipc import sample_unipc

Sampler = Callable[..., torch.Tensor]

SAMPLERS: dict[str, Sampler] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "dpm++2m": sample_dpmpp_2m,
    "unipc": sample_unipc,
}

__all__ = [
    "SAMPLERS",
    "Callback",
    "Denoiser",
    "Sampler",
    "TimeShiftedDenoiser",
    "flow_lambda",
    "flow_sigmas",
    "get_sampler",
    "nfe_per_sampler",
    "sample_dpmpp_2m",
    "sample_euler",
    "sample_heun",
    "sample_unipc",
    "shift_sigmas",
]


def get_sampler(name: str) -> Sampler:
    """The sampler function registered under `name`; ValueError listing the known names otherwise."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; known samplers: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def nfe_per_sampler(name: str, steps: int) -> int:
    """Denoiser calls the sampler `name` makes for `steps` steps on a schedule ending at sigma 0."""
    get_sampler(name)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return 2 * steps - 1 if name == "heun" else steps
