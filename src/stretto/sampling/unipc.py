"""UniPC-bh2 of order 2: a multistep predictor (UniP) and a corrector (UniC) reusing the next model call."""

from __future__ import annotations

import math

import torch

from stretto.sampling.contract import Callback, Denoiser, finish_step
from stretto.sampling.schedules import flow_lambda

# diffusers' UniPC moves a first sigma of 1 to 1 - 1e-6 so that lambda stays finite. Doing the same (for
# lambda only) keeps this solver equal to diffusers on Flux-style schedules that start at exactly 1;
# with lambda = -inf the order-2 corrector after the first step would weigh the pure-noise point differently.
_LAMBDA_SIGMA_MAX = 1 - 1e-6


@torch.no_grad()
def sample_unipc(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback | None = None
) -> torch.Tensor:
    """UniPC-bh2, order 2 (Zhao et al., "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
    Diffusion Models") on a flow schedule, in the data prediction x0 = x - s v; 1 NFE a step.

    As diffusers' UniPCMultistepScheduler(solver_order=2, solver_type="bh2", predict_x0=True,
    prediction_type="flow_prediction", use_flow_sigmas=True, lower_order_final=True): order 1 on the first
    and last step, and the model output at each new point corrects that point (UniC) before the next
    prediction; the final step to sigma 0 is not corrected.
    """
    sig = sigmas.tolist()
    lam = [flow_lambda(min(s, _LAMBDA_SIGMA_MAX)) for s in sig]
    steps = len(sig) - 1
    x0s: list[torch.Tensor] = []  # data predictions at sig[i - 2], sig[i - 1]
    x_before = x  # x at sig[i - 1], before the last predictor step
    order = 0
    for i in range(steps):
        v = denoiser(x, sigmas[i])
        x0 = x - sigmas[i] * v
        if i > 0:
            x = _correct(x_before, x0, x0s, sig, lam, i, order)
        x0s = [*x0s[-1:], x0]
        order = min(2, steps - i, i + 1)
        x_before = x
        x = _predict(x, x0s, sig, lam, i, order)
        finish_step(i, sigmas[i], sigmas[i + 1], x, callback)
    return x


def _predict(
    x: torch.Tensor, x0s: list[torch.Tensor], sig: list[float], lam: list[float], i: int, order: int
) -> torch.Tensor:
    """UniP-bh2 from sig[i] to sig[i + 1]; x0s[-1] is the data prediction at sig[i]."""
    s, t = sig[i], sig[i + 1]
    h = lam[i + 1] - lam[i]
    h_phi_1 = math.expm1(-h)  # B(h) = h_phi_1 for bh2
    m0 = x0s[-1]
    x_t = (t / s) * x - (1 - t) * h_phi_1 * m0
    if order == 2:
        r = (lam[i - 1] - lam[i]) / h
        x_t = x_t - (1 - t) * h_phi_1 * 0.5 * (x0s[-2] - m0) / r
    return x_t


def _correct(
    x_before: torch.Tensor,
    x0_t: torch.Tensor,
    x0s: list[torch.Tensor],
    sig: list[float],
    lam: list[float],
    i: int,
    order: int,
) -> torch.Tensor:
    """UniC-bh2 of `order`: redo the step sig[i - 1] -> sig[i] using x0_t, the data prediction at sig[i]."""
    s, t = sig[i - 1], sig[i]
    h = lam[i] - lam[i - 1]
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = h_phi_1
    m0 = x0s[-1]
    x_t = (t / s) * x_before - (1 - t) * h_phi_1 * m0
    if order == 1:
        corr = 0.5 * (x0_t - m0)
    else:
        # Solve [[1, 1], [r, 1]] @ (rho_1, rho_t) = (b_1, b_2), the bh2 order conditions.
        h_phi_k = h_phi_1 / hh - 1
        b1 = h_phi_k / b_h
        b2 = 2 * (h_phi_k / hh - 0.5) / b_h
        r = (lam[i - 2] - lam[i - 1]) / h
        rho_1 = (b1 - b2) / (1 - r)
        corr = rho_1 * (x0s[-2] - m0) / r + (b1 - rho_1) * (x0_t - m0)
    return x_t - (1 - t) * b_h * corr
