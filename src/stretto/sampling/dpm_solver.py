"""DPM-Solver++(2M): a second-order multistep exponential integrator in the data prediction x0 = x - s v."""

from __future__ import annotations

import math

import torch

from stretto.sampling.contract import Callback, Denoiser, finish_step
from stretto.sampling.schedules import flow_lambda


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback | None = None
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al., "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
    Models") on a flow schedule, in lambda = log((1 - s) / s); 1 NFE a step.

    As diffusers' DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
    prediction_type="flow_prediction", use_flow_sigmas=True, final_sigmas_type="zero",
    lower_order_final=True): the first step and the step to sigma 0 are first order (DDIM). A last step that
    stops short of 0 stays second order (diffusers would make it first order below 15 steps). A previous
    point at sigma 1 has lambda = -inf and gives no slope, so the step after it is first order too.
    """
    sig = sigmas.tolist()
    lam = [flow_lambda(s) for s in sig]
    x0_prev = None
    for i in range(len(sig) - 1):
        s, t = sig[i], sig[i + 1]
        v = denoiser(x, sigmas[i])
        x0 = x - sigmas[i] * v
        if t == 0:
            x = x0  # the first-order step to sigma 0 lands exactly on the data prediction
        else:
            h = lam[i + 1] - lam[i]
            d = x0
            # The r -> inf limit when the previous point is pure noise: no correction.
            if x0_prev is not None and math.isfinite(lam[i - 1]):
                r = (lam[i] - lam[i - 1]) / h
                d = x0 + (x0 - x0_prev) / (2 * r)
            x = (t / s) * x - (1 - t) * math.expm1(-h) * d
        x0_prev = x0
        finish_step(i, sigmas[i], sigmas[i + 1], x, callback)
    return x
