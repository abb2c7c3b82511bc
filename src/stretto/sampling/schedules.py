"""Sigma schedules for flow-matching samplers: uniform in sigma, then the SD3/Flux timestep shift."""

from __future__ import annotations

import math

import torch


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3 timestep shift s' = k s / (1 + (k - 1) s) (Esser et al., "Scaling Rectified Flow Transformers").

    k > 1 spends more steps at high noise. Flux's resolution-dependent shift with exponent mu is the
    same map with k = exp(mu).
    """
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_sigmas(steps: int, shift: float = 1.0) -> torch.Tensor:
    """The `steps + 1` sigmas from 1 to exactly 0, uniform then shifted, as SD3/Flux sample (float32).

    Equal to diffusers' FlowMatchEulerDiscreteScheduler(shift=shift).set_timesteps(sigmas=linspace(1, 1/steps,
    steps)).sigmas, which is how the Flux pipeline calls it.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    sigmas = shift_sigmas(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift)
    sigmas[-1] = 0.0
    return sigmas.float()


def flow_lambda(sigma: float) -> float:
    """Half-log-SNR lambda = log((1 - s) / s), the time variable of DPM-Solver (Lu et al.) on a flow schedule.

    -inf at pure noise (s = 1), inf at data (s = 0).
    """
    if sigma >= 1:
        return -math.inf
    if sigma <= 0:
        return math.inf
    return math.log((1 - sigma) / sigma)
