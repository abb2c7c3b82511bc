"""What the students share: the image teacher, its guided velocity, the student network, the run loop, export.

`run` drives any trainer (the world model's Self Forcing too).

A student is a `ShapesFlux` initialised from the teacher (DMD2 and AnyFlow both start from it) whose config
records how it samples (`student`: method, sigma grid, baked-in guidance, teacher); it loads and generates
like any model (`stretto generate --model <folder>`).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from tqdm import tqdm

from stretto import checkpoints
from stretto.data import shapes
from stretto.models.shapes_flux import PromptStates, ShapesFlux, ShapesFluxConfig
from stretto.train.state import ResumeError, load_state, save_state


def check_config(cfg, extra_sizes: tuple[str, ...] = ()) -> None:
    """The checks every student config shares: counts >= 1, a baked-in guidance (image students) in [1, 20]."""
    for name in ("steps", "batch_size", "save_every", *extra_sizes):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if hasattr(cfg, "guidance") and not 1.0 <= cfg.guidance <= 20.0:
        raise ValueError(f"guidance must be in [1, 20], got {cfg.guidance}")


def resume_settings(cfg) -> dict:
    """What a resumed run must share with the saved one (everything but where it is and how long it runs)."""
    return {k: v for k, v in asdict(cfg).items() if k not in ("out", "steps", "save_every", "device")}


def load_teacher(name_or_path: str, device: str | torch.device = "cpu") -> ShapesFlux:
    """The frozen teacher; a CheckpointError for another kind of model or for a student."""
    teacher = checkpoints.load(name_or_path, device=device, kind=ShapesFlux.kind)
    if teacher.config.student is not None or teacher.config.flow_map:
        raise checkpoints.CheckpointError(
            f"checkpoint {name_or_path!r} is itself a distilled {teacher.config.student['method']} student; "
            "distil from a many-step teacher (e.g. shapes-flux)"
        )
    return teacher.requires_grad_(False)


def student_from(teacher: ShapesFlux, student: dict, flow_map: bool = False) -> ShapesFlux:
    """A trainable copy of the teacher that records `student`; a flow map's gap embedding starts at zero,
    so at initialisation u(x, t, r) is the teacher's conditional velocity whatever r is."""
    config = ShapesFluxConfig(**{**asdict(teacher.config), "flow_map": flow_map, "student": student})
    model = ShapesFlux(config).to(next(teacher.parameters()).device)
    model.load_state_dict(teacher.state_dict(), strict=not flow_map)
    if flow_map:
        last = model.transformer.time_text_embed.guidance_embedder.linear_2
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    return model.train().requires_grad_(True)


def guided_velocity(
    model: ShapesFlux, x: torch.Tensor, sigma: torch.Tensor, cond: PromptStates, null: PromptStates, guidance: float
) -> torch.Tensor:
    """Classifier-free guided velocity, both branches in one batched call (guidance 1: conditional only)."""
    if guidance == 1.0:
        return model(x, sigma, cond)
    v_cond, v_null = model(torch.cat([x, x]), torch.cat([sigma, sigma]), PromptStates.cat([cond, null])).chunk(2)
    return v_null + guidance * (v_cond - v_null)


def data_batch(seed: int, step: int, part: int, size: int) -> tuple[torch.Tensor, list[str]]:
    """Procedural images and prompts for (seed, step, part): a resumed run sees the same batches."""
    x0, prompts, _ = shapes.make_batch((seed * 1_000_003 + step) * 16 + part, size)
    return x0, prompts


def generator(seed: int, step: int, part: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 7919 + step) * 16 + part)


class StudentTrainer(Protocol):
    """What `run` drives: a config (out, steps, save_every, command()), the EMA to export, the state
    to save (named modules and optimizers) and one update."""

    cfg: object
    ema: ShapesFlux

    def modules(self) -> dict[str, nn.Module]: ...
    def optimizers(self) -> dict[str, torch.optim.Optimizer]: ...
    def step(self, step: int) -> dict[str, float]: ...


def run(trainer: StudentTrainer, desc: str) -> Path:
    """Run `trainer.step` from the saved step (or 0) to cfg.steps, saving the state and exporting the EMA
    student every cfg.save_every steps; returns cfg.out/model."""
    cfg = trainer.cfg
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    modules, optimizers, settings = trainer.modules(), trainer.optimizers(), resume_settings(cfg)
    state_path = out / "train_state.safetensors"
    if state_path.exists():
        start = load_state(state_path, modules, optimizers, settings)
    elif getattr(cfg, "continue_from", None):
        start = continue_from(Path(cfg.continue_from), out, modules, optimizers)
        if start >= cfg.steps:
            raise ResumeError(f"--continue-from {cfg.continue_from} is at step {start}: --steps must be more, "
                              f"got {cfg.steps}")  # fmt: skip
    else:
        start = 0
    command = cfg.command()
    print(f"{desc}: steps {start} -> {cfg.steps}; out {out}")
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=desc, smoothing=0.05)
    with open(out / "loss.log", "a") as log:
        for step in bar:
            metrics = trainer.step(step)
            bar.set_postfix({k: f"{v:.4f}" for k, v in metrics.items()})
            log.write(json.dumps({"step": step + 1, "time": round(time.time()), **metrics}) + "\n")
            log.flush()
            if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
                save_state(state_path, step + 1, modules, optimizers, settings)
                if hasattr(trainer, "export"):  # a trainer that stores its model its own way
                    trainer.export(out / "model", step + 1)
                else:
                    checkpoints.save(
                        trainer.ema, out / "model", trained_steps=step + 1, train_command=command,
                        **training_history(out, step + 1, command),
                    )  # fmt: skip
    return out / "model"


LINEAGE = "lineage.json"


def continue_from(parent: Path, out: Path, modules: dict, optimizers: dict) -> int:
    """Start a new run in `out` from another run's saved state (every network, the optimizer moments, the step
    count), with settings that may differ: a fine-tune in stages, which a resume refuses. The parent's history
    is kept in out/lineage.json for the exported model's `training_history`."""
    state = parent / "train_state.safetensors"
    exported = parent / "model" / "config.json"
    if not state.exists() or not exported.exists():
        raise ResumeError(f"--continue-from {parent}: not a run folder (no train_state.safetensors and model/)")
    step = load_state(state, modules, optimizers)
    meta = json.loads(exported.read_text())
    history = meta.get("training_history") or [f"steps 0-{meta['trained_steps']:,}: {meta['train_command']}"]
    (out / LINEAGE).write_text(json.dumps({"parent": str(parent), "step": step, "history": history}, indent=1))
    return step


def training_history(out: Path, step: int, command: str) -> dict:
    """{"training_history": [...]} for a run continued from another, else {}."""
    path = out / LINEAGE
    if not path.exists():
        return {}
    lineage = json.loads(path.read_text())
    return {"training_history": [*lineage["history"], f"steps {lineage['step']:,}-{step:,}: {command}"]}


def make_ema(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).requires_grad_(False).eval()
