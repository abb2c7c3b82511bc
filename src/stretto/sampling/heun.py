"""Heun's method (explicit trapezoid) on the flow ODE dx/ds = v(x, s)."""

from __future__ import annotations

import torch

from stretto.sampling.contract import Callback, Denoiser, finish_step


@torch.no_grad()
def sample_heun(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback | None = None
) -> torch.Tensor:
    """Heun's 2nd-order sampler (Karras et al., "Elucidating the Design Space of Diffusion-Based Generative
    Models", Alg. 1) on the flow ODE: 2 NFE a step, 1 on a final step to sigma 0 (Euler there)."""
    is_zero = [s == 0 for s in sigmas.tolist()]
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        dt = sigma_next - sigma
        d = denoiser(x, sigma)
        if is_zero[i + 1]:
            x = x + dt * d
        else:
            x_euler = x + dt * d
            d_next = denoiser(x_euler, sigma_next)
            x = x + dt * (d + d_next) / 2
        finish_step(i, sigma, sigma_next, x, callback)
    return x
