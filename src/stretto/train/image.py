"""Train the shipped text-to-image model with rectified-flow matching (Liu et al. 2022; SD3's logit-normal t).

x_s = (1 - s) x0 + s eps, the network predicts v = eps - x0. Prompts are dropped 10% of the time
(replaced by the empty prompt) so that classifier-free guidance works at sampling time.
Data is generated on the fly from (seed, step), so a resumed run sees exactly the batches it would have.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from stretto import checkpoints
from stretto.data import shapes
from stretto.models.shapes_flux import ShapesFlux, ShapesFluxConfig
from stretto.train.state import ema_update, load_train_state, save_train_state


@dataclass
class ImageTrainConfig:
    out: str = "runs/shapes-flux"
    steps: int = 10000
    batch_size: int = 64
    lr: float = 6e-4
    warmup: int = 200
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    prompt_dropout: float = 0.1
    save_every: int = 250
    seed: int = 0
    double_blocks: int = 2
    single_blocks: int = 4

    def __post_init__(self):
        for name in ("steps", "batch_size", "save_every", "double_blocks", "single_blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.prompt_dropout < 1:
            raise ValueError(f"prompt_dropout must be in [0, 1), got {self.prompt_dropout}")


def learning_rate(cfg: ImageTrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak at cfg.steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def flow_matching_loss(model: ShapesFlux, x0: torch.Tensor, prompts: list[str], gen: torch.Generator) -> torch.Tensor:
    b = x0.shape[0]
    sigma = torch.sigmoid(torch.randn(b, generator=gen))  # logit-normal(0, 1)
    noise = torch.randn(x0.shape, generator=gen)
    s = sigma.view(b, 1, 1, 1)
    x_s = (1 - s) * x0 + s * noise
    v = model(x_s, sigma, model.encode_prompts(prompts))
    return torch.nn.functional.mse_loss(v, noise - x0)


def train_image(cfg: ImageTrainConfig) -> Path:
    """Train (or resume) and export the EMA weights as a loadable checkpoint in cfg.out/model."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = ShapesFlux(
        ShapesFluxConfig(vocab=shapes.VOCAB, double_blocks=cfg.double_blocks, single_blocks=cfg.single_blocks)
    )
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    state_path = out / "train_state.safetensors"
    start = load_train_state(state_path, model, ema, opt) if state_path.exists() else 0
    n_params = sum(p.numel() for p in model.parameters())
    print(f"shapes-flux: {n_params / 1e6:.2f}M parameters; steps {start} -> {cfg.steps}; out {out}")

    log = open(out / "loss.log", "a")  # noqa: SIM115
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="train image", smoothing=0.05)
    running = None
    for step in bar:
        x0, prompts, _ = shapes.make_batch(cfg.seed * 1_000_003 + step, cfg.batch_size)
        rng = np.random.default_rng((cfg.seed, step))
        prompts = ["" if rng.random() < cfg.prompt_dropout else p for p in prompts]
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + step)
        for group in opt.param_groups:
            group["lr"] = learning_rate(cfg, step)
        loss = flow_matching_loss(model, x0, prompts, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema_update(ema, model, cfg.ema_decay if step > cfg.warmup else 0.0)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.set_postfix(loss=f"{running:.4f}", lr=f"{group['lr']:.1e}")
        if (step + 1) % 50 == 0:
            log.write(f"{step + 1}\t{running:.5f}\t{time.time():.0f}\n")
            log.flush()
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            save_train_state(state_path, step + 1, model, ema, opt)
            export(ema, out / "model", cfg, step + 1)
    log.close()
    return out / "model"


def export(ema: ShapesFlux, folder: Path, cfg: ImageTrainConfig, step: int) -> None:
    """Ship the EMA weights in fp16 (half the bytes; loaded back as fp32)."""
    checkpoints.save(
        ema,
        folder,
        dtype=torch.float16,
        trained_steps=step,
        train_command=f"stretto train image --steps {cfg.steps} --batch-size {cfg.batch_size} --out {cfg.out}",
    )
