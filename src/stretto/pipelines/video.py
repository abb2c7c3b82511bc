"""Streaming a text-prompted causal video model: prompts in (switchable mid-stream), frames out block by block.

Self Forcing / CausVid on diffusers' Wan and SkyReels-V2 diffusion forcing (both `CausalWan`) and AnyFlow-FAR
(`CausalFAR`), through the one driver (`stretto.pipelines.world.stream_blocks`). A prompt is text (encoded by the
model's UMT5, from its diffusers pipeline folder) or prompt embeddings (B, L, text_dim). A switch is CausVid's
dynamic prompting (Yin et al. 2025): from a given frame on, the new prompt's cross-attention K/V (computed once)
replace the old, and the video's KV cache is kept, so the scene carries on under the new text (AnyFlow-FAR, which
re-encodes its context at every commit, re-encodes it under the new text). Latents are decoded by the model's VAE as
each block is done, its causal-convolution cache carried from block to block (`StreamDecoder`). With `ar_step` below
the steps, SkyReels-V2's diffusion-forcing wave keeps several blocks in flight
(`stretto.pipelines.diffusion_forcing`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from stretto.models.causal_far import CausalFAR
from stretto.models.causal_wan import CausalWan
from stretto.models.wan_parts import StreamDecoder, WanParts, load_parts, pipeline_folder
from stretto.pipelines.diffusion_forcing import stream_diffusion_forcing
from stretto.pipelines.world import StreamFrame, StreamSettings, block_frames, model_steps, stream_blocks


def prompt_blocks(prompt: Any, switches: Mapping[int, Any], sizes: Iterator[int]) -> Iterator[Any]:
    """The prompt of every block (of `sizes` frames each), endless: `prompt`, then each switch from the first block
    starting at its frame."""
    pending = sorted(switches.items(), key=lambda item: item[0])
    frame = 0
    for size in sizes:
        while pending and pending[0][0] <= frame:
            prompt = pending.pop(0)[1]
        yield prompt  # the same object until a switch: the driver prepares its K/V once
        frame += size


def check_switches(switches: Mapping[int, Any] | None) -> dict[int, Any]:
    """Switch frames >= 1 and non-empty prompts, or a one-line error naming the switch."""
    checked = {}
    for frame, prompt in (switches or {}).items():
        if isinstance(frame, bool) or not isinstance(frame, int) or frame < 1:
            raise ValueError(f"a prompt switch's frame must be an int >= 1 (frame 0 is the prompt), got {frame!r}")
        if isinstance(prompt, str) and not prompt.strip():
            raise ValueError(f"the prompt switch at frame {frame} has an empty prompt; give the text to switch to")
        checked[frame] = prompt
    return checked


STREAMED_KINDS = (CausalWan.kind, CausalFAR.kind)


def stream_video(
    model: CausalWan | CausalFAR,
    prompt_embeds: torch.Tensor,
    settings: StreamSettings | None = None,
    *,
    switches: Mapping[int, torch.Tensor] | None = None,
    first_block: torch.Tensor | None = None,
    ar_step: int | None = None,
    seed: int = 0,
    frames: int | None = None,
) -> Iterator[StreamFrame]:
    """Stream latents of a text-conditioned causal video model, one `StreamFrame` (pixels = latent frame) each.

    prompt_embeds (B, L, text_dim): the text encoder's states; switches: {frame: embeddings} switch the prompt
    from the first block starting at or after that frame. first_block: optional given latent frames (B, F, C, H,
    W), e.g. an encoded first image. ar_step < steps: diffusion forcing, blocks in flight together, each lagging
    the one before by ar_step steps (SkyReels-V2; `stretto.pipelines.diffusion_forcing`). Endless unless `frames`
    is given.
    """
    switches = check_switches(switches)
    for frame, embeds in switches.items():
        if embeds.shape[0] != prompt_embeds.shape[0]:
            raise ValueError(f"the prompt switch at frame {frame} has batch {embeds.shape[0]}, the prompt "
                             f"{prompt_embeds.shape[0]}")  # fmt: skip
    blocks = prompt_blocks(prompt_embeds, switches, block_frames(model, first_block is not None))
    settings = settings or StreamSettings()
    if settings.steps is None:
        settings = replace(settings, steps=model_steps(model))
    if ar_step is not None and ar_step < settings.steps:
        if first_block is not None:
            raise ValueError("diffusion forcing (ar_step < steps) starts from noise; first_block is not supported")
        if next(block_frames(model)) != model.frames_per_block:  # one place says what a first block is
            raise ValueError("diffusion forcing (ar_step < steps) runs blocks of one size; this model's first is short")
        if settings.feature_cache is not None:
            raise ValueError(
                "a feature cache runs one block's denoising loop at a time; diffusion forcing (ar_step < steps) keeps "
                "several blocks in flight in one call: stream with ar_step >= steps or without feature_cache"
            )
        return stream_diffusion_forcing(model, blocks, settings, ar_step, batch=prompt_embeds.shape[0], seed=seed,
                                        frames=frames)  # fmt: skip
    return stream_blocks(
        model,
        blocks,
        settings,
        first_block=first_block,
        first_condition=prompt_embeds,
        batch=prompt_embeds.shape[0],
        seed=seed,
        frames=frames,
    )


def decoded(latents: Iterator[StreamFrame], decoder: StreamDecoder, sizes: Iterator[int]) -> Iterator[StreamFrame]:
    """Latent frames -> video frames, each block (of `sizes` frames each) decoded as soon as its latents are out."""
    block: list[StreamFrame] = []
    size = next(sizes)
    produced = 0

    def flush():
        nonlocal produced
        began = time.perf_counter()
        video = decoder.decode(torch.stack([f.pixels for f in block], dim=1))
        latency = block[0].latency_s + time.perf_counter() - began
        for i in range(video.shape[1]):
            yield StreamFrame(produced, video[:, i], latency, block[-1].kv_bytes)
            produced += 1

    try:
        for frame in latents:
            block.append(frame)
            if len(block) == size:
                yield from flush()
                block, size = [], next(sizes)
        if block:  # a `frames` limit that ends inside a block
            yield from flush()
    finally:
        latents.close()  # frees the stream's KV cache with this generator


def stream(
    model: CausalWan | CausalFAR | str | Path,
    prompt: str | torch.Tensor,
    *,
    switches: Mapping[int, str | torch.Tensor] | None = None,
    parts: str | Path | WanParts | None = None,
    decode: bool = True,
    latent_size: tuple[int, int] | None = None,
    ar_step: int | None = None,
    frames: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    **settings,
) -> Iterator[StreamFrame]:
    """Stream a causal video model: frames (decoded by its VAE, else latents) as each block is done.

    model: a `CausalWan` / `CausalFAR` or a path `stretto.load` reads (a Self-Forcing / CausVid release, a
    diffusers Wan, SkyReels-V2 or AnyFlow-FAR folder). prompt: text or embeddings (B, L, text_dim); switches:
    {frame: prompt} (latent frame index). parts: the diffusers Wan pipeline folder whose text encoder, VAE (and,
    for diffusion forcing, scheduler) the model uses; default the pipeline folder the model sits in.
    latent_size: (h, w) of the latent frames (video size / 8 with Wan's VAE; default the model's, 60 x 104 = 480
    x 832 for Self Forcing). ar_step < steps: diffusion forcing, blocks in flight together (SkyReels-V2).
    frames: latent frames to generate (endless if None). settings: those of `StreamSettings` (mode, steps,
    window, ...).
    """
    if isinstance(prompt, str) and not prompt.strip():
        raise ValueError("the prompt is empty; give the text the stream should start from")
    switches = check_switches(switches)
    if isinstance(model, str | Path):
        from stretto.checkpoints import load

        parts = parts if parts is not None else pipeline_folder(model)
        model = load(model, device=device, kind=STREAMED_KINDS)
    if latent_size is not None and tuple(latent_size) != model.latent_size:
        model = model.resized(tuple(latent_size))
    if not isinstance(parts, WanParts):
        parts = load_parts(parts, device=device)
    own_solver = getattr(model, "diffusion_forcing", False) or getattr(model, "flow_map", False)
    if own_solver and parts.scheduler is not None:  # SkyReels-V2's UniPC, AnyFlow's flow map: not Self Forcing's
        settings.setdefault("scheduler", parts.scheduler)
    encoded: dict[str, torch.Tensor] = {}

    def embeds(p: str | torch.Tensor) -> torch.Tensor:
        if not isinstance(p, str):
            return p
        if p not in encoded:  # one object per distinct text: its K/V are computed once
            encoded[p] = parts.encode(p)
        return encoded[p]

    latents = stream_video(
        model,
        embeds(prompt),
        StreamSettings(**settings),
        switches={frame: embeds(p) for frame, p in switches.items()},
        ar_step=ar_step,
        seed=seed,
        frames=frames,
    )
    if not decode or parts.vae is None:
        return latents
    return decoded(latents, StreamDecoder(parts.vae), block_frames(model))
