"""Train the shapes classifier (the prompt-adherence judge and FID feature network) on procedural scenes.

Batches come from `make_batch(TRAIN_SEED_BASE + seed * 1_000_003 + step)`, so a run is a pure function of
(seed, steps); these seeds are disjoint from the image model's, the FID reference's and the held-out ones.
Augmentation (mild noise, slight blur, brightness/contrast jitter) makes it robust to generated images.

    python -m stretto.train.classifier --out src/stretto/weights/shapes-classifier --steps 1600
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from stretto import checkpoints
from stretto.data import shapes
from stretto.eval.classifier import (
    HELDOUT_SEED,
    IGNORE,
    ShapesClassifier,
    ShapesClassifierConfig,
    prompt_accuracy,
    scene_targets,
)

TRAIN_SEED_BASE = 1_000_000_000


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable 3-tap Gaussian blur with a per-image sigma (B,)."""
    taps = torch.exp(-torch.tensor([1.0, 0.0, 1.0]) / (2 * sigma[:, None] ** 2))
    taps = (taps / taps.sum(1, keepdim=True)).view(-1, 3, 1, 1, 1)
    p = F.pad(x, (1, 1, 0, 0), mode="replicate")
    x = taps[:, 0] * p[..., :-2] + taps[:, 1] * p[..., 1:-1] + taps[:, 2] * p[..., 2:]
    p = F.pad(x, (0, 0, 1, 1), mode="replicate")
    return taps[:, 0] * p[..., :-2, :] + taps[:, 1] * p[..., 1:-1, :] + taps[:, 2] * p[..., 2:, :]


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mild corruptions of the kind a few-step sampler leaves: blur, contrast/brightness shift, noise."""
    b = x.shape[0]
    u = lambda lo, hi: torch.empty(b, 1, 1, 1).uniform_(lo, hi, generator=gen)  # noqa: E731
    blurred = _blur(x, torch.empty(b).uniform_(0.3, 0.8, generator=gen))
    x = torch.where(torch.rand(b, 1, 1, 1, generator=gen) < 0.3, blurred, x)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * u(0.85, 1.15) + mean + u(-0.08, 0.08)
    return x + u(0.0, 0.12) * torch.randn(x.shape, generator=gen)


def classifier_loss(model: ShapesClassifier, x: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over heads of the cross-entropy, each averaged over the images the head applies to."""
    logits = model(x)
    losses = [F.cross_entropy(logits[k], t, ignore_index=IGNORE) for k, t in targets.items() if (t != IGNORE).any()]
    return torch.stack(losses).sum()


def heldout_accuracy(model: ShapesClassifier, n: int = 2000, noise: float = 0.0, seed: int = HELDOUT_SEED) -> float:
    """Exact-scene accuracy on n fresh images (seeds never trained on), optionally with Gaussian noise."""
    x, prompts, _ = shapes.make_batch(seed, n)
    if noise > 0:
        x = x + noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return prompt_accuracy(model, x, prompts)


def train_classifier(
    out_dir: str | Path, steps: int = 1600, batch_size: int = 128, seed: int = 0, lr: float = 2e-3
) -> Path:
    """Train from scratch and export fp16 weights as a loadable checkpoint in out_dir."""
    if steps < 1 or batch_size < 2:
        raise ValueError(f"need steps >= 1 and batch_size >= 2, got steps={steps}, batch_size={batch_size}")
    torch.manual_seed(seed)
    model = ShapesClassifier(ShapesClassifierConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    warmup = min(100, steps // 10)
    bar = tqdm(range(steps), desc="train classifier", smoothing=0.05)
    running = None
    for step in bar:
        x, _, scenes = shapes.make_batch(TRAIN_SEED_BASE + seed * 1_000_003 + step, batch_size)
        frac = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr * frac
        loss = classifier_loss(model, augment(x, gen), scene_targets(scenes))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.set_postfix(loss=f"{running:.4f}")
    model.eval()
    folder = checkpoints.save(
        model, out_dir, dtype=torch.float16, trained_steps=steps,
        train_command=f"stretto train classifier --out {out_dir} --steps {steps} "
        f"--batch-size {batch_size} --seed {seed}",
    )  # fmt: skip
    return folder
