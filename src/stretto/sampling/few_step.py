"""The samplers of distilled few-step students: predict-and-renoise (DMD2) and flow-map jumps (AnyFlow / sCM).

Both take the student's own sigma grid (high noise first, without the final 0) rather than an ODE schedule:
a distilled student is trained at those noise levels and only there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from stretto.sampling.contract import Callback, Denoiser, finish_step

FlowMap = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x, sigma, sigma_to) -> u


@torch.no_grad()
def sample_x0_renoise(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    noises: list[torch.Tensor],
    callback: Callback | None = None,
) -> torch.Tensor:
    """Multi-step sampling of a DMD2 generator (Yin et al. 2024, sec. 4.3; as in consistency models).

    At each grid sigma the generator predicts x0 = x - sigma v; unless it is the last, x0 is noised afresh
    to the next sigma with `noises[i]` (one fresh noise per step, same shape as x; the caller seeds them).
    """
    if len(noises) < len(sigmas) - 1:
        raise ValueError(f"need {len(sigmas) - 1} renoising draws for {len(sigmas)} steps, got {len(noises)}")
    for i, sigma in enumerate(sigmas):
        x0 = x - sigma * denoiser(x, sigma)
        sigma_next = sigmas[i + 1] if i + 1 < len(sigmas) else torch.zeros_like(sigma)
        x = (1 - sigma_next) * x0 + sigma_next * noises[i] if i + 1 < len(sigmas) else x0
        finish_step(i, sigma, sigma_next, x, callback)
    return x


@torch.no_grad()
def sample_flow_map(
    flow_map: FlowMap, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback | None = None
) -> torch.Tensor:
    """Deterministic jumps x_r = x_t - (t - r) u(x_t, t, r) along `sigmas` (which ends at 0).

    The update diffusers' `FlowMapEulerDiscreteScheduler` takes; with u the instantaneous velocity it is Euler.
    """
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x = x - (sigma - sigma_next) * flow_map(x, sigma, sigma_next)
        finish_step(i, sigma, sigma_next, x, callback)
    return x
