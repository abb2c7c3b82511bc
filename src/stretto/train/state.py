"""Resumable training state in one safetensors file, no pickle.

`save_state` / `load_state` hold any named modules and optimizers plus the run's settings (a resumed run with
different settings is refused); `save_train_state` / `load_train_state` are the one-model + EMA form the
trainers in `train/` use.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from stretto.checkpoints import storable


class ResumeError(ValueError):
    """A saved run that cannot be continued with the settings given."""


def save_state(
    path: Path,
    step: int,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    settings: dict | None = None,
) -> None:
    tensors = {}
    for name, module in modules.items():
        tensors |= {f"{name}.{k}": v for k, v in storable(module.state_dict()).items()}
    for name, opt in optimizers.items():
        for i, state in opt.state_dict()["state"].items():
            for key, value in state.items():
                tensors[f"{name}/{i}/{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tmp = path.with_suffix(".tmp")
    save_file(tensors, tmp, metadata={"step": str(step)})
    tmp.replace(path)  # atomic: a crash mid-write never leaves a broken state behind
    path.with_suffix(".json").write_text(json.dumps({"step": step, "settings": settings}, indent=1) + "\n")


def load_state(
    path: Path,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    settings: dict | None = None,
) -> int:
    """Restore a state written by save_state; returns the step to continue from.

    With `settings`, a saved run whose settings differ (other than the total step count) is a ResumeError.
    """
    meta = json.loads(path.with_suffix(".json").read_text())
    saved = meta.get("settings")
    if settings is not None and saved is not None:
        changed = sorted(k for k in set(settings) | set(saved) if k != "steps" and settings.get(k) != saved.get(k))
        if changed:
            diffs = ", ".join(f"{k}: saved {saved.get(k)!r}, given {settings.get(k)!r}" for k in changed)
            raise ResumeError(f"{path.parent} holds a run with other settings ({diffs}); use another --out")
    tensors = load_file(path)
    saved_modules = sorted({k.split(".", 1)[0] for k in tensors if "/" not in k.split(".", 1)[0]})
    for name, module in modules.items():
        if name not in saved_modules:
            has = ", ".join(saved_modules)
            raise ResumeError(f"{path} holds no {name!r} state (it has {has}): a run of another kind")
        try:
            module.load_state_dict({k[len(name) + 1 :]: v for k, v in tensors.items() if k.startswith(f"{name}.")})
        except RuntimeError as e:  # other shapes or names: a run of another architecture
            raise ResumeError(f"{path}: its {name!r} does not fit this run ({str(e).splitlines()[0]})") from None
    for name, opt in optimizers.items():
        opt_state = opt.state_dict()
        for key, value in tensors.items():
            if key.startswith(f"{name}/"):
                _, i, field = key.split("/", 2)
                opt_state["state"].setdefault(int(i), {})[field] = value
        opt.load_state_dict(opt_state)
    return meta["step"]


def save_train_state(
    path: Path, step: int, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer, settings: dict | None = None
) -> None:
    save_state(path, step, {"model": model, "ema": ema}, {"opt": opt}, settings)


def load_train_state(
    path: Path, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer, settings: dict | None = None
) -> int:
    """Restore a state written by save_train_state (or by its older form, which named the AdamW moments opt.*)."""
    tensors = load_file(path)
    if any(k.startswith("opt.") for k in tensors):  # states saved before save_state existed
        renamed = {("opt/" + k[4:].replace(".", "/", 1) if k.startswith("opt.") else k): v for k, v in tensors.items()}
        save_file(renamed, path, metadata={"step": str(json.loads(path.with_suffix(".json").read_text())["step"])})
    return load_state(path, {"model": model, "ema": ema}, {"opt": opt}, settings)


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p, 1.0 - decay)
