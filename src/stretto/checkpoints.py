"""Checkpoints: a folder with `config.json` (kind, config, how it was trained) and `model.safetensors`.

Never pickle. Shipped checkpoints live in `stretto/weights/<name>/` and load with no network.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

SHIPPED_DIR = Path(__file__).parent / "weights"
DEFAULT_MODEL = "shapes-flux"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or of the wrong kind."""


def _model_classes() -> dict[str, tuple[type, type]]:
    # Imported lazily so that reading a config does not import every model.
    from stretto.eval.classifier import ShapesClassifier, ShapesClassifierConfig
    from stretto.models.shapes_flux import ShapesFlux, ShapesFluxConfig
    from stretto.models.text_lm import BlockDiffusionLM, MaskedDiffusionLM, TextLMConfig
    from stretto.models.world_dit import WorldDiT, WorldDiTConfig

    return {
        ShapesFlux.kind: (ShapesFlux, ShapesFluxConfig),
        ShapesClassifier.kind: (ShapesClassifier, ShapesClassifierConfig),
        MaskedDiffusionLM.kind: (MaskedDiffusionLM, TextLMConfig),
        BlockDiffusionLM.kind: (BlockDiffusionLM, TextLMConfig),
        WorldDiT.kind: (WorldDiT, WorldDiTConfig),
    }


def shipped_models() -> list[str]:
    return sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / "config.json").exists()) if SHIPPED_DIR.exists() else []


def resolve(name_or_path: str | Path) -> Path:
    """A shipped model name or a checkpoint folder -> the folder, or a CheckpointError saying what exists."""
    path = Path(name_or_path)
    if not path.exists() and (SHIPPED_DIR / str(name_or_path)).exists():
        path = SHIPPED_DIR / str(name_or_path)
    if not (path / "config.json").exists() or not (path / "model.safetensors").exists():
        raise CheckpointError(
            f"no checkpoint at {str(name_or_path)!r} (a folder with config.json and model.safetensors); "
            f"shipped models: {', '.join(shipped_models()) or 'none'}"
        )
    return path


def save(model: nn.Module, folder: str | Path, dtype: torch.dtype = torch.float32, **meta) -> Path:
    """Write a model's config and weights (optionally stored in a smaller float dtype)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    save_file(tensors, folder / "model.safetensors")
    config = {"kind": model.kind, "config": model.config.to_dict(), "stored_dtype": str(dtype), **meta}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def read_config(folder: str | Path) -> dict:
    """A checkpoint's config.json as a dict with its `kind` and `config`, or a CheckpointError naming the problem."""
    path = resolve(folder) / "config.json"
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"corrupt checkpoint config {path}: {err}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint config {path} must hold a JSON object, got {_excerpt(meta)}")
    if "config" not in meta:
        raise CheckpointError(f"checkpoint config {path} has no 'config' entry (the model's settings)")
    if not isinstance(meta["config"], dict):
        raise CheckpointError(
            f"checkpoint config {path}: 'config' must be a JSON object, got {_excerpt(meta['config'])}"
        )
    for key, value in meta["config"].items():
        numbers = value if isinstance(value, list) else [value]
        if any(isinstance(n, int) and not isinstance(n, bool) and n < 0 for n in numbers):
            raise CheckpointError(f"checkpoint config {path}: config.{key} is {value}; sizes and ids must be >= 0")
    return meta


def _excerpt(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_kind(name_or_path: str | Path, kind: str | Sequence[str]) -> str:
    """The checkpoint's kind, or a CheckpointError if it is not `kind` (or one of several); reads only config.json."""
    found = read_config(name_or_path).get("kind")
    kinds = [kind] if isinstance(kind, str) else list(kind)
    if found not in kinds:
        expected = f"a {kinds[0]!r}" if len(kinds) == 1 else "one of " + ", ".join(repr(k) for k in kinds)
        raise CheckpointError(f"checkpoint {str(name_or_path)!r} is a {found!r}, expected {expected}")
    return found


def load(
    name_or_path: str | Path = DEFAULT_MODEL,
    device: str | torch.device = "cpu",
    kind: str | Sequence[str] | None = None,
):
    """Load a checkpoint (shipped name or folder) as an fp32 model in eval mode on `device`.

    `kind`: the model kind (or kinds) the caller can use; another kind is a CheckpointError naming both.
    A Self-Forcing / CausVid release (.pt / .safetensors) or a diffusers Wan folder loads as a `CausalWan`.
    """
    from stretto.models.wan_checkpoints import is_wan_checkpoint

    if is_wan_checkpoint(name_or_path):
        return _load_causal_wan(name_or_path, device, kind)
    folder = resolve(name_or_path)
    meta = read_config(folder)
    classes = _model_classes()
    if meta.get("kind") not in classes:
        raise CheckpointError(f"checkpoint {folder} has kind {meta.get('kind')!r}; known kinds: {sorted(classes)}")
    if kind is not None:
        check_kind(name_or_path, kind)
    model_cls, config_cls = classes[meta["kind"]]
    try:
        model = model_cls(config_cls(**meta["config"]))
    except (TypeError, ValueError, RuntimeError, ArithmeticError) as err:
        # A config that does not build its model (unknown field, sizes that do not fit together).
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(
            f"checkpoint config {folder / 'config.json'} does not build a {meta['kind']}: {reason}"
        ) from None
    try:
        tensors = load_file(folder / "model.safetensors")
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"corrupt checkpoint {folder}: {err}") from None
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {folder} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.to(device).eval()


def _load_causal_wan(path: str | Path, device: str | torch.device, kind: str | Sequence[str] | None):
    from stretto.models.wan_checkpoints import load_causal_wan

    try:
        model = load_causal_wan(path)
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    kinds = [kind] if isinstance(kind, str) else list(kind or [model.kind])
    if model.kind not in kinds:
        expected = f"a {kinds[0]!r}" if len(kinds) == 1 else "one of " + ", ".join(repr(k) for k in kinds)
        raise CheckpointError(f"checkpoint {str(path)!r} is a {model.kind!r}, expected {expected}")
    return model.to(device).eval()
