"""Euler's method on the flow ODE dx/ds = v(x, s)."""

from __future__ import annotations

import torch

from stretto.sampling.contract import Callback, Denoiser, finish_step


@torch.no_grad()
def sample_euler(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback | None = None
) -> torch.Tensor:
    """Euler sampler for rectified flow (Liu et al., "Flow Straight and Fast"), 1 NFE a step."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        v = denoiser(x, sigma)
        x = x + (sigma_next - sigma) * v
        finish_step(i, sigma, sigma_next, x, callback)
    return x
