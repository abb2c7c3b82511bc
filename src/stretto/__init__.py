"""stretto: make diffusion models generate fast (fewer steps, cheaper steps, streaming)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["generate", "load", "__version__"]


def load(name_or_path: str = "shapes-flux", device: str = "cpu", kind: str | None = None):
    """Load a shipped model by name (e.g. "shapes-flux") or a checkpoint folder, fp32, eval mode."""
    from stretto.checkpoints import load as _load
    from stretto.devices import resolve_device

    return _load(name_or_path, device=resolve_device(device), kind=kind)


def generate(model, prompts, **kwargs):
    """Generate images for prompts; see stretto.pipeline.generate for the settings."""
    from stretto.pipeline import generate as _generate

    return _generate(model, prompts, **kwargs)
