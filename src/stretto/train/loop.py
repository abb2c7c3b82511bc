"""The optimisation loop every stretto trainer shares: AdamW, warm-up + cosine LR, clipping, EMA, resume, export.

A trainer supplies the model, a `batch_loss(model, step, gen)` and an `export(ema, step)`; the loop owns the rest.
Batches and noise are functions of (seed, step), so a resumed run sees exactly the batches it would have.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from tqdm import tqdm

from stretto.train.state import ema_update, load_train_state, save_train_state


class LoopConfig(Protocol):
    out: str
    steps: int
    lr: float
    warmup: int
    weight_decay: float
    ema_decay: float
    save_every: int
    seed: int


def learning_rate(cfg: LoopConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak at cfg.steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_loop(
    model: nn.Module,
    cfg: LoopConfig,
    batch_loss: Callable[[nn.Module, int, torch.Generator], torch.Tensor],
    export: Callable[[nn.Module, int], None],
    desc: str,
    after_step: Callable[[nn.Module, int, tqdm], None] | None = None,
    settings: dict | None = None,
) -> Path:
    """Train `model` from cfg.out's saved state (or from scratch) to cfg.steps; returns cfg.out/model.

    settings: what the saved state must have been trained with to be resumed (a `ResumeError` names the change).
    """
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    state_path = out / "train_state.safetensors"
    start = load_train_state(state_path, model, ema, opt, settings) if state_path.exists() else 0
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{desc}: {n_params / 1e6:.2f}M parameters; steps {start} -> {cfg.steps}; out {out}")

    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"train {desc}", smoothing=0.05)
    running = None
    with open(out / "loss.log", "a") as log:
        for step in bar:
            lr = learning_rate(cfg, step)
            for group in opt.param_groups:
                group["lr"] = lr
            loss = batch_loss(model, step, torch.Generator().manual_seed(cfg.seed * 7919 + step))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            ema_update(ema, model, cfg.ema_decay if step > cfg.warmup else 0.0)
            running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
            bar.set_postfix(loss=f"{running:.4f}", lr=f"{lr:.1e}")
            if (step + 1) % 50 == 0:
                log.write(f"{step + 1}\t{running:.5f}\t{time.time():.0f}\n")
                log.flush()
            if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
                save_train_state(state_path, step + 1, model, ema, opt, settings)
                export(ema, step + 1)
            if after_step is not None:
                after_step(ema, step + 1, bar)
    return out / "model"
