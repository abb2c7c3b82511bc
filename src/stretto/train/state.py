"""Resumable training state (model, EMA, AdamW moments, step) in one safetensors file, no pickle."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn


def save_train_state(path: Path, step: int, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer) -> None:
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    tensors |= {f"ema.{k}": v.detach().contiguous() for k, v in ema.state_dict().items()}
    for i, state in opt.state_dict()["state"].items():
        for name, value in state.items():
            tensors[f"opt.{i}.{name}"] = torch.as_tensor(value).detach().contiguous()
    tmp = path.with_suffix(".tmp")
    save_file(tensors, tmp, metadata={"step": str(step)})
    tmp.replace(path)  # atomic: a crash mid-write never leaves a broken state behind
    path.with_suffix(".json").write_text(json.dumps({"step": step}) + "\n")


def load_train_state(path: Path, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer) -> int:
    """Restore a state written by save_train_state; returns the step to continue from."""
    tensors = load_file(path)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    opt_state = opt.state_dict()
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, i, name = key.split(".", 2)
            opt_state["state"].setdefault(int(i), {})[name] = value
    opt.load_state_dict(opt_state)
    return json.loads(path.with_suffix(".json").read_text())["step"]


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p, 1.0 - decay)
