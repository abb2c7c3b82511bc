"""stretto: make diffusion models generate fast (fewer steps, cheaper steps, streaming)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["generate", "load", "stream_world", "__version__"]


def load(name_or_path: str = "shapes-flux", device: str = "cpu", kind: str | None = None):
    """Load a shipped model by name (e.g. "shapes-flux") or a checkpoint folder, fp32, eval mode."""
    from stretto.checkpoints import load as _load
    from stretto.devices import resolve_device

    return _load(name_or_path, device=resolve_device(device), kind=kind)


def generate(model, prompts, **kwargs):
    """Generate images for prompts; see stretto.pipeline.generate for the settings."""
    from stretto.pipeline import generate as _generate

    return _generate(model, prompts, **kwargs)


def stream_world(model, actions, world: int = 1_000_000, seed: int = 0, frames: int | None = None, **settings):
    """Stream a world model steered by `actions` ("RRUL..." or action indices; may be an endless iterator).

    The prompt is the simulator's first view of map `world`. Yields `StreamFrame`s (pixels (1, 3, H, W) in
    [-1, 1], index, latency) as soon as each block is denoised; `settings` are those of
    stretto.stream.world.StreamSettings (mode, steps, window, sinks, ...). Closing the generator frees its cache.
    """
    from stretto.data.world import STAY, parse_actions, prompt_block
    from stretto.stream.world import StreamSettings, stream

    if isinstance(actions, str):
        actions = parse_actions(actions)
    fpb = model.config.frames_per_block
    device = next(model.parameters()).device
    prompt, prompt_actions, _ = prompt_block([world], [STAY] * fpb, fpb)
    return stream(
        model,
        prompt.to(device),
        prompt_actions.to(device),
        actions,
        StreamSettings(**settings),
        seed=seed,
        frames=frames,
    )
