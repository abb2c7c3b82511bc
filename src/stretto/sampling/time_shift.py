"""Time-Shift Sampler for flow models: call the network at the noise level that x actually has."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from stretto.sampling.contract import Denoiser


@dataclass
class TimeShiftedDenoiser:
    """Time-Shift Sampler (Li et al., "Alleviating Exposure Bias in Diffusion Models through Sampling with
    Shifted Time Steps", ICLR 2024, TS-DPM) wrapped around a flow denoiser.

    A sampler's x drifts away from the noise level its sigma claims (exposure bias). At each call this
    wrapper measures the variance of x, finds the sigma whose expected variance
    (1 - s)^2 * data_var + s^2 matches it (solved in closed form on the branch where the variance grows
    with s), clamps it to [sigma - window, sigma + window], and calls the inner denoiser there. The
    sampler still steps with its own sigmas; only the network sees the shifted one.

    Like the paper it shifts only at high noise (sigma > cutoff; the paper stops at t = 300 of 1000 with a
    window of 80 steps, i.e. +-0.04), and never below data_var / (1 + data_var), where the expected variance
    has its minimum and stops telling noise levels apart. The paper picks a time per sample; this uses
    the batch mean of the per-sample variances, so the denoiser keeps getting one 0-d sigma.
    Costs one host sync per call. data_var is the per-image pixel variance of the data (about 0.25-0.35
    for images in [-1, 1]).
    """

    denoiser: Denoiser
    data_var: float = 0.3
    window: float = 0.04
    cutoff: float = 0.3

    def __post_init__(self) -> None:
        if not self.data_var > 0:
            raise ValueError(f"data_var must be > 0, got {self.data_var}")
        if not 0 <= self.window <= 1:
            raise ValueError(f"window must be in [0, 1], got {self.window}")
        if not 0 <= self.cutoff <= 1:
            raise ValueError(f"cutoff must be in [0, 1], got {self.cutoff}")

    def matched_sigma(self, x: torch.Tensor, sigma: float) -> float:
        """The sigma the network should see for x at nominal `sigma` (sigma itself outside the range)."""
        d = self.data_var
        lowest = max(self.cutoff, d / (1 + d))
        if sigma <= lowest or sigma >= 1:
            return sigma
        var = float(x.detach().float().flatten(1).var(dim=1).mean())
        # (1 - s)^2 d + s^2 = var  ->  (d + 1) s^2 - 2 d s + d - var = 0, larger root.
        s = (d + math.sqrt(max(var * (d + 1) - d, 0.0))) / (d + 1)
        return min(max(s, sigma - self.window, lowest), sigma + self.window, 1.0)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        nominal = float(sigma)
        shifted = self.matched_sigma(x, nominal)
        if shifted != nominal:
            sigma = torch.tensor(shifted, dtype=sigma.dtype, device=sigma.device)
        return self.denoiser(x, sigma)
