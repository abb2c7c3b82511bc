"""A flow-map student: X(t -> r) = x_t - (t - r) u(x_t, t, r) for any pair of noise levels t > r.

AnyFlow (a flow map over any pair of times, with a dual-timestep embedding; here the gap t - r enters through
Flux's guidance embedding) trained by the flow map's semigroup property, as in shortcut models (Frans et al.
2024) and Boffi et al. 2025 ("How to build a consistency model: learning flow maps via self-distillation"):
- the diagonal r = t is the teacher's guided velocity (u(x, t, t) -> v_cfg(x, t)): the only teacher signal;
- off the diagonal, one jump t -> r must equal two half jumps t -> m -> r of the student itself (no gradient).
Jumps are then composed from short, teacher-grounded ones up to the whole way from noise to data, so the
student samples in any number of steps (diffusers' `FlowMapEulerDiscreteScheduler` takes the same update).

Departures: x_t comes from procedural data noised by the forward process (the teacher was trained on it); with
`rollout_fraction` > 0 that share of rows instead starts from the student's own jump from noise, X_ema(1 -> t)(eps),
the points a few-step sampler actually visits (a light form of AnyFlow's on-policy stage, which rolls out the
teacher); the half jumps use the current weights with stop
gradient rather than an EMA copy; one row in four is a diagonal row and t = 1 (where sampling starts) is drawn a
quarter of the time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from stretto.distill.dmd import noised
from stretto.distill.students import (
    check_config,
    data_batch,
    generator,
    guided_velocity,
    load_teacher,
    make_ema,
    run,
    student_from,
)
from stretto.train.state import ema_update

METHOD = "flowmap"


@dataclass
class FlowMapConfig:
    teacher: str = "shapes-flux"
    out: str = "runs/shapes-flux-flowmap"
    steps: int = 3000
    batch_size: int = 48
    guidance: float = 3.0  # the teacher's CFG on the diagonal (the student bakes it in)
    diagonal_fraction: float = 0.25
    rollout_fraction: float = 0.0  # rows whose x_t is the EMA student's own jump from noise (on-policy inputs)
    lr: float = 1e-4
    ema_decay: float = 0.995
    save_every: int = 100
    seed: int = 0
    device: str = "cpu"
    continue_from: str | None = None  # a run folder whose saved state this run starts from

    def __post_init__(self):
        check_config(self)
        if not 0.0 < self.diagonal_fraction < 1.0:
            raise ValueError(f"diagonal_fraction must be in (0, 1), got {self.diagonal_fraction}")
        if not 0.0 <= self.rollout_fraction < 1.0:
            raise ValueError(f"rollout_fraction must be in [0, 1), got {self.rollout_fraction}")

    def command(self) -> str:
        return (
            f"stretto distill flowmap --teacher {self.teacher} --out {self.out} --steps {self.steps} "
            f"--batch-size {self.batch_size} --guidance {self.guidance:g} --lr {self.lr:g} --seed {self.seed}"
            + (f" --rollout-fraction {self.rollout_fraction:g}" if self.rollout_fraction else "")
            + (f" --continue-from {self.continue_from}" if self.continue_from else "")
        )


class FlowMapTrainer:
    def __init__(self, cfg: FlowMapConfig):
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.teacher = load_teacher(cfg.teacher, cfg.device)
        student = {"method": METHOD, "guidance": cfg.guidance, "teacher": cfg.teacher, "default_steps": 2}
        self.student = student_from(self.teacher, student, flow_map=True)
        self.ema = make_ema(self.student)
        self.opt = torch.optim.AdamW(self.student.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)

    def targets(self, x_t, t, r, prompts: list[str], diagonal: torch.Tensor) -> torch.Tensor:
        """u targets: the teacher's guided velocity on diagonal rows, two half jumps of the student elsewhere."""
        target = torch.empty_like(x_t)
        with torch.no_grad():
            d = diagonal
            if d.any():
                rows = [p for p, keep in zip(prompts, d.tolist(), strict=True) if keep]
                cond = self.teacher.encode_prompts(rows)
                null = self.teacher.encode_prompts([""] * len(rows))
                target[d] = guided_velocity(self.teacher, x_t[d], t[d], cond, null, self.cfg.guidance)
            o = ~diagonal
            if o.any():
                rows = [p for p, keep in zip(prompts, o.tolist(), strict=True) if keep]
                cond = self.student.encode_prompts(rows)
                t_o, r_o = t[o], r[o]
                m = (t_o + r_o) / 2
                view = (-1, 1, 1, 1)
                x_m = x_t[o] - (t_o - m).view(view) * self.student(x_t[o], t_o, cond, m)
                x_r = x_m - (m - r_o).view(view) * self.student(x_m, m, cond, r_o)
                target[o] = (x_t[o] - x_r) / (t_o - r_o).view(view)
        return target

    @torch.no_grad()
    def rollout(self, noise, t, prompts: list[str], rows: torch.Tensor) -> torch.Tensor:
        """X_ema(1 -> t)(noise): where the student's own first jump lands, the input its next step sees."""
        cond = self.ema.encode_prompts([p for p, keep in zip(prompts, rows.tolist(), strict=True) if keep])
        one = torch.ones_like(t)
        return noise - (one - t).view(-1, 1, 1, 1) * self.ema(noise, one, cond, t)

    def step(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        x0, prompts = data_batch(cfg.seed, step, 0, cfg.batch_size)
        gen = generator(cfg.seed, step, 0)
        b = len(prompts)
        t = torch.rand(b, generator=gen).clamp_min(0.02)
        t = torch.where(torch.rand(b, generator=gen) < 0.25, torch.ones_like(t), t)
        # gap t - r uniform in (0, t]; at least 0.005 so the target's division by the gap stays well conditioned
        r = t - (t * torch.rand(b, generator=gen)).clamp_min(0.005)
        diagonal = torch.rand(b, generator=gen) < cfg.diagonal_fraction
        r = torch.where(diagonal, t, r)
        noise = torch.randn(x0.shape, generator=gen)
        x_t = noised(x0, t, noise)
        dev = cfg.device
        x_t, t, r, diagonal = x_t.to(dev), t.to(dev), r.to(dev), diagonal.to(dev)
        if cfg.rollout_fraction > 0:
            rollout = (torch.rand(b, generator=gen) < cfg.rollout_fraction).to(dev) & (t < 1)
            if rollout.any():
                x_t[rollout] = self.rollout(noise.to(dev)[rollout], t[rollout], prompts, rollout)
        target = self.targets(x_t, t, r, prompts, diagonal)
        u = self.student(x_t, t, self.student.encode_prompts(prompts), r)
        per_row = F.mse_loss(u, target, reduction="none").mean(dim=(1, 2, 3))
        loss = per_row.mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.student.parameters(), 1.0)
        self.opt.step()
        ema_update(self.ema, self.student, cfg.ema_decay)
        metrics = {"loss": loss.item()}
        if diagonal.any():
            metrics["diagonal"] = per_row[diagonal].mean().item()
        if (~diagonal).any():
            metrics["jump"] = per_row[~diagonal].mean().item()
        return metrics

    def modules(self) -> dict:
        return {"student": self.student, "ema": self.ema}

    def optimizers(self) -> dict:
        return {"opt": self.opt}


def distill_flow_map(cfg: FlowMapConfig) -> Path:
    """Train (or resume) a flow-map student; exports the EMA weights to cfg.out/model."""
    return run(FlowMapTrainer(cfg), desc=f"distill {METHOD}")
