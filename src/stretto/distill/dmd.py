"""Distribution Matching Distillation: Yin et al., "One-step Diffusion with Distribution Matching Distillation"
(CVPR 2024) and "Improved Distribution Matching Distillation for Fast Image Synthesis" (DMD2, NeurIPS 2024).

The generator's samples x are pushed along the difference of two scores at a random noise level: the real
score (the frozen teacher, with classifier-free guidance) and the fake score (a copy trained online on the
generator's own samples). With flow matching, a score is read through its x0 prediction: x0 = x_s - s v.
Everything here works on tensors and callables; it knows no model class, so images and world frames share it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

X0Predictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_s, sigma per row) -> x0


def noised(x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The flow-matching forward process x_s = (1 - s) x0 + s eps, sigma one per row."""
    s = sigma.view(-1, *([1] * (x0.dim() - 1)))
    return (1 - s) * x0 + s * noise


def dmd_gradient(x0: torch.Tensor, real_x0: torch.Tensor, fake_x0: torch.Tensor) -> torch.Tensor:
    """DMD's per-sample gradient (p_real - p_fake) / mean|p_real|, with p = x0 - x0_prediction.

    Normalised by the mean absolute real-score difference over every dimension but the batch (DMD eq. 8),
    so its scale does not depend on the noise level. Zero when the fake score agrees with the real one.
    """
    p_real = x0 - real_x0
    p_fake = x0 - fake_x0
    dims = tuple(range(1, x0.dim()))
    scale = p_real.abs().mean(dim=dims, keepdim=True).clamp_min(1e-6)
    return (p_real - p_fake) / scale


def dmd_loss(x0: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """0.5 ||x0 - sg(x0 - grad)||^2 (mean): a loss whose gradient with respect to x0 is grad / numel."""
    return 0.5 * F.mse_loss(x0, (x0 - grad).detach())


def distribution_matching_loss(
    x0: torch.Tensor,
    real: X0Predictor,
    fake: X0Predictor,
    gen: torch.Generator,
    sigma_range: tuple[float, float] = (0.02, 0.98),
) -> tuple[torch.Tensor, dict]:
    """The generator's DMD loss on its samples x0 (with grad): noise them at s ~ U(sigma_range) (DMD2 uses
    t in [0.02, 0.98]), read both scores without gradients, return the loss and what was measured."""
    b = x0.shape[0]
    lo, hi = sigma_range
    sigma = lo + (hi - lo) * torch.rand(b, generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    with torch.no_grad():
        x_s = noised(x0.detach(), sigma.to(x0.device), noise.to(x0.device))
        real_x0 = real(x_s, sigma.to(x0.device))
        fake_x0 = fake(x_s, sigma.to(x0.device))
        grad = dmd_gradient(x0.detach(), real_x0, fake_x0)
    return dmd_loss(x0, grad), {"dmd_grad_norm": float(grad.norm() / b**0.5)}


def fake_score_loss(
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    gen: torch.Generator,
) -> torch.Tensor:
    """The fake score's ordinary flow-matching loss on the generator's detached samples, sigma ~ U(0, 1)."""
    b = x0.shape[0]
    sigma = torch.rand(b, generator=gen).to(x0.device)
    noise = torch.randn(x0.shape, generator=gen).to(x0.device)
    x0 = x0.detach()
    return F.mse_loss(velocity(noised(x0, sigma, noise), sigma), noise - x0)


def gan_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss softplus(-D(fake)) (DMD2 sec. 4.2)."""
    return F.softplus(-fake_logits).mean()


def gan_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """softplus(D(fake)) + softplus(-D(real)): the classifier learns real data from generated samples."""
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
