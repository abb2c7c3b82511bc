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
INDEX = "model.safetensors.index.json"  # a sharded checkpoint's map of tensor -> shard


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or of the wrong kind."""


def _model_classes() -> dict[str, tuple[type, type]]:
    # Imported lazily so that reading a config does not import every model.
    from stretto.eval.classifier import ShapesClassifier, ShapesClassifierConfig
    from stretto.models.shapes_flux import ShapesFlux, ShapesFluxConfig
    from stretto.models.shapes_unet import ShapesUNet, ShapesUNetConfig
    from stretto.models.text_lm import BlockDiffusionLM, MaskedDiffusionLM, TextLMConfig
    from stretto.models.unmask_filter import UnmaskFilter, UnmaskFilterConfig
    from stretto.models.world_dit import WorldDiT, WorldDiTConfig

    return {
        ShapesFlux.kind: (ShapesFlux, ShapesFluxConfig),
        ShapesUNet.kind: (ShapesUNet, ShapesUNetConfig),
        ShapesClassifier.kind: (ShapesClassifier, ShapesClassifierConfig),
        MaskedDiffusionLM.kind: (MaskedDiffusionLM, TextLMConfig),
        BlockDiffusionLM.kind: (BlockDiffusionLM, TextLMConfig),
        UnmaskFilter.kind: (UnmaskFilter, UnmaskFilterConfig),
        WorldDiT.kind: (WorldDiT, WorldDiTConfig),
    }


def shipped_models() -> list[str]:
    return sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / "config.json").exists()) if SHIPPED_DIR.exists() else []


def resolve(name_or_path: str | Path) -> Path:
    """A shipped model name or a checkpoint folder -> the folder, or a CheckpointError saying what exists."""
    path = Path(name_or_path)
    if not path.exists() and (SHIPPED_DIR / str(name_or_path)).exists():
        path = SHIPPED_DIR / str(name_or_path)
    if not (path / "config.json").exists() or not has_weights(path):
        raise CheckpointError(
            f"no checkpoint at {str(name_or_path)!r} (a folder with config.json and model.safetensors, "
            f"or shards and {INDEX}); "
            f"shipped models: {', '.join(shipped_models()) or 'none'}"
        )
    return path


def has_weights(folder: Path) -> bool:
    return (folder / "model.safetensors").exists() or (folder / INDEX).exists()


def is_published(folder: Path) -> bool:
    """Is the folder laid out as a published model (config.json with a `model_type`, no stretto `kind`)?"""
    try:
        meta = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(meta, dict) and "model_type" in meta and "kind" not in meta


def storable(state: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """A state dict safetensors can write: on the CPU, contiguous, tied tensors (T5's shared embedding) copied."""
    out, seen = {}, set()
    for key, value in state.items():
        value = value.detach()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        value = value.cpu().contiguous()
        if value.data_ptr() in seen:
            value = value.clone()
        seen.add(value.data_ptr())
        out[key] = value
    return out


def save(model: nn.Module, folder: str | Path, dtype: torch.dtype = torch.float32, **meta) -> Path:
    """Write a model's config and weights (optionally stored in a smaller float dtype)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = storable(model.state_dict(), dtype)
    save_file(tensors, folder / "model.safetensors")
    config = {"kind": model.kind, "config": model.config.to_dict(), "stored_dtype": str(dtype), **meta}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def _training_record(name_or_path: str | Path, key: str):
    meta = json.loads((resolve(name_or_path) / "config.json").read_text())
    return meta.get(key) if isinstance(meta, dict) else None


def trained_gen_length(name_or_path: str | Path) -> int | None:
    """The answer canvas a text model was trained on (`gen_length` in its config.json), when it records one."""
    value = _training_record(name_or_path, "gen_length")
    return value if isinstance(value, int) and value > 0 else None


def trained_tasks(name_or_path: str | Path) -> list[str]:
    """The text tasks a model was trained on (`tasks` in its config.json), [] when it does not say."""
    value = _training_record(name_or_path, "tasks")
    return [t for t in value if isinstance(t, str)] if isinstance(value, list) else []


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


TEXT_KINDS = ("masked-lm", "block-lm")  # what a published folder is once loaded (cli and serve keep light copies)


def check_kind(name_or_path: str | Path, kind: str | Sequence[str]) -> str:
    """The checkpoint's kind, or a CheckpointError if it is not `kind` (or one of several); reads only config.json.

    A published-layout folder (LLaDA, Dream, ...) has no stretto kind: it is named by its model_type, and it is
    taken wherever a text kind is (whether it is a masked-lm or a block-lm shows once it loads onto its class).
    """
    folder = resolve(name_or_path)
    if is_published(folder):
        model_type = json.loads((folder / "config.json").read_text())["model_type"]
        found = f"published {model_type} checkpoint"
        wanted = (kind,) if isinstance(kind, str) else tuple(kind)
        if any(k in TEXT_KINDS for k in wanted):
            return found
    else:
        found = read_config(folder).get("kind")
    require_kind(name_or_path, found, kind)
    return found


def require_kind(name_or_path: str | Path, found: str, kind: str | Sequence[str] | None) -> None:
    """A CheckpointError naming both kinds unless `found` is `kind` (or one of several; None takes any)."""
    kinds = [kind] if isinstance(kind, str) else list(kind or [found])
    if found not in kinds:
        expected = f"a {kinds[0]!r}" if len(kinds) == 1 else "one of " + ", ".join(repr(k) for k in kinds)
        raise CheckpointError(f"checkpoint {str(name_or_path)!r} is a {found!r}, expected {expected}")


def load(
    name_or_path: str | Path = DEFAULT_MODEL,
    device: str | torch.device = "cpu",
    kind: str | Sequence[str] | None = None,
    dtype: torch.dtype = torch.float32,
):
    """Load a checkpoint (shipped name or folder) as a model in eval mode on `device`, fp32 unless `dtype` says.

    A folder laid out as a published diffusion LM (LLaDA, Dream, Fast-dLLM v2, SDAR) loads onto its transformers
    class (`stretto.models.hf_load`); an 8B one needs dtype=torch.bfloat16 to fit 24 GiB. A Self-Forcing /
    CausVid release (.pt / .safetensors) or a diffusers Wan folder loads as a `CausalWan`. `kind`: the model
    kind (or kinds) the caller can use; another kind is a CheckpointError naming both.
    """
    from stretto.models.wan_checkpoints import is_wan_checkpoint

    if is_wan_checkpoint(name_or_path):
        return _load_causal_wan(name_or_path, device, kind, dtype)
    folder = resolve(name_or_path)
    if is_published(folder):
        return _load_published(folder, device, kind, dtype)
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
    return model.to(device=device, dtype=dtype).eval()


def _load_causal_wan(
    path: str | Path, device: str | torch.device, kind: str | Sequence[str] | None, dtype: torch.dtype
):
    from stretto.models.wan_checkpoints import load_causal_wan

    try:
        model = load_causal_wan(path)
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    require_kind(path, model.kind, kind)
    return model.to(device=device, dtype=dtype).eval()


def _load_published(folder: Path, device: str | torch.device, kind: str | Sequence[str] | None, dtype: torch.dtype):
    from stretto.models.hf_load import LayoutError, load_published, unsupported_reason  # imports transformers

    kinds = [kind] if isinstance(kind, str) else kind
    why = unsupported_reason(json.loads((folder / "config.json").read_text()).get("model_type"))
    if kinds is not None and why:  # said before any weight is read
        raise CheckpointError(f"checkpoint {str(folder)!r} is {why}")
    try:
        model = load_published(folder, device, dtype)
    except LayoutError as err:
        raise CheckpointError(str(err)) from None
    if kind is not None:  # (a natively hosted model such as DiffusionGemma has no stretto kind)
        require_kind(folder, model.kind, kind)
    return model
