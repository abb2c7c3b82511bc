"""What a denoiser and a sampler promise each other, and the check every sampler runs after a step.

Convention (rectified flow, as in SD3 and Flux): x_s = (1 - s) x0 + s eps with sigma s in [0, 1],
s = 1 pure noise. A denoiser is any callable `denoiser(x, sigma) -> v` taking a 0-d float tensor sigma
and returning the velocity v = eps - x0 with the shape of x. Samplers know nothing else about it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, torch.Tensor, torch.Tensor], None]


def finish_step(
    i: int, sigma: torch.Tensor, sigma_next: torch.Tensor, x: torch.Tensor, callback: Callback | None
) -> None:
    """Raise FloatingPointError if step i left a non-finite x; else call `callback(i, sigma_next, x)`."""
    # One host sync per step: cheap next to a network call, and a NaN caught late wastes the whole run.
    if not bool(torch.isfinite(x).all()):
        step = f"sigma {float(sigma):.6g} -> {float(sigma_next):.6g}"
        raise FloatingPointError(f"non-finite value in x after sampling step {i} ({step})")
    if callback is not None:
        callback(i, sigma_next, x)
