"""stretto: make diffusion models generate fast (fewer steps, cheaper steps, streaming).

The public API, one function per modality; each hands over to the pipeline that owns the whole run:
images `stretto.pipelines.image`, text `stretto.pipelines.text`, world streams `stretto.pipelines.world`,
causal video streams `stretto.pipelines.video`.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["generate", "generate_text", "generate_text_stream", "load", "stream", "stream_world", "__version__"]


def load(name_or_path: str = "shapes-flux", device: str = "cpu", kind: str | None = None, dtype=None):
    """Load a shipped model by name, a checkpoint folder, or a published model, in eval mode, fp32 unless `dtype`.

    Published layouts load onto the library class that implements them: LLaDA / Dream / Fast-dLLM v2 / SDAR
    folders onto transformers' LMs; a Self-Forcing / CausVid checkpoint (.pt, read tensors-only) or a diffusers
    Wan folder as a streamable `CausalWan` on diffusers' WanTransformer3DModel.
    """
    import torch

    from stretto.checkpoints import load as _load
    from stretto.devices import resolve_device

    return _load(name_or_path, device=resolve_device(device), kind=kind, dtype=dtype or torch.float32)


def generate(model, prompts, **kwargs):
    """Generate images for prompts; see stretto.pipelines.image.generate for the settings."""
    from stretto.pipelines.image import generate as _generate

    return _generate(model, prompts, **kwargs)


def generate_text(model, prompts, **kwargs):
    """Complete prompts with a diffusion LM; see stretto.pipelines.text.generate for the settings."""
    from stretto.pipelines.text import generate as _generate

    return _generate(model, prompts, **kwargs)


def generate_text_stream(model, prompts, **kwargs):
    """Continuous batching: (index, result) per prompt as it finishes; see stretto.pipelines.text.generate_stream."""
    from stretto.pipelines.text import generate_stream as _generate_stream

    return _generate_stream(model, prompts, **kwargs)


def stream_world(model, actions, **kwargs):
    """Stream a world model steered by actions; see stretto.pipelines.world.stream_world."""
    from stretto.pipelines.world import stream_world as _stream_world

    return _stream_world(model, actions, **kwargs)


def stream(model, prompt, **kwargs):
    """Stream a causal video model (Self Forcing / CausVid / SkyReels-V2) from a text prompt, switchable mid-stream.

    Yields frames (decoded by the model's VAE, else latents) as each block is done; see
    stretto.pipelines.video.stream, e.g. `stretto.stream("ckpt.pt", "a cat", parts="Wan2.1-T2V-1.3B-Diffusers",
    switches={48: "a dog"}, frames=96)`.
    """
    from stretto.pipelines.video import stream as _stream

    return _stream(model, prompt, **kwargs)
