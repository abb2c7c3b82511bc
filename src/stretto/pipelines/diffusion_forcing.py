"""Diffusion forcing over a KV cache: blocks in flight at staggered noise levels (SkyReels-V2's `ar_step`).

Diffusion forcing (Chen et al. 2024) gives every frame its own noise level; SkyReels-V2 (Chen et al. 2025) denoises
a video as a wave: every block in flight advances one step per model call, and block i starts when block i-1 takes
its (ar_step + 1)-th step, so block i lags block i-1 by `ar_step` steps and up to ceil(steps / ar_step) blocks are
in flight at once. Its pipeline re-runs every frame of the video at every call. Here a call runs only the blocks in
flight, block-causal among themselves, over the KV cache of the finished blocks: a block is yielded and committed at
t = 0 (the level the pipeline gives finished frames) as soon as its last step is done. Each block has its own copy
of the scheduler (SkyReels-V2 gives each frame one). `ar_step >= steps` is `stream_blocks`' one block at a time.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch

from stretto.pipelines.world import StreamContext, StreamFrame, StreamModel, StreamSettings


@dataclass
class _InFlight:
    """One block on its way: its latents, its own solver, the steps it has taken, when it started."""

    x: torch.Tensor
    scheduler: Any
    cond: Any
    began: float
    done: int = 0

    def level(self) -> torch.Tensor:
        t = self.scheduler.timesteps[self.done]
        return torch.full(self.x.shape[:2], float(t) / self.scheduler.config.num_train_timesteps, dtype=torch.float64)


@torch.no_grad()
def stream_diffusion_forcing(
    model: StreamModel,
    conditions: Iterable[Any],
    settings: StreamSettings,
    ar_step: int,
    *,
    batch: int = 1,
    seed: int = 0,
    frames: int | None = None,
) -> Iterator[StreamFrame]:
    """Stream with several blocks in flight, block i lagging block i-1 by `ar_step` steps (SkyReels-V2's schedule).

    settings.scheduler is required (each block steps its own copy); a call conditions on the newest block's
    prompt. Yields each block's frames when its last step is done; endless unless `frames` is given.
    """
    if settings.scheduler is None:
        raise ValueError("diffusion forcing steps every block with its own solver: set StreamSettings.scheduler")
    if settings.parallel is not None:
        raise ValueError(f"diffusion forcing runs on one process; StreamSettings.parallel={settings.parallel!r} is for "
                         "stream_blocks")  # fmt: skip
    if isinstance(ar_step, bool) or not isinstance(ar_step, int) or not 1 <= ar_step < settings.steps:
        raise ValueError(f"ar_step must be an int in [1, steps={settings.steps}), got {ar_step!r} "
                         "(ar_step >= steps is one block at a time: stream_blocks)")  # fmt: skip
    fpb = model.frames_per_block
    if settings.mode == "kv" and settings.max_frames is None and frames is not None:
        settings = replace(settings, max_frames=-(-frames // fpb) * fpb)  # whole blocks hold `frames`
    settings.check(model)
    p = next(model.parameters())
    template = copy.deepcopy(settings.scheduler)
    template.set_timesteps(settings.steps, device=p.device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    context = StreamContext(model, batch, settings, seed=seed)
    pending = iter(conditions)
    inflight: list[_InFlight] = []
    raw, prepared, started, produced = None, None, 0, 0
    try:
        while True:
            wanted = frames is None or started * fpb < frames
            if wanted and (not inflight or inflight[-1].done == ar_step):  # it takes step ar_step + 1 now
                cond = next(pending, None)
                if cond is not None:
                    if prepared is None or cond is not raw:
                        raw, prepared = cond, model.condition(cond)
                    # the same draws as stream_blocks: one (steps, ...) tensor per block, its first slice used
                    noise = torch.randn((settings.steps, batch, fpb, *model.frame_shape), generator=gen)[0]
                    inflight.append(_InFlight(noise.to(p), copy.deepcopy(template), prepared, time.perf_counter()))
                    started += 1
            if not inflight:
                return
            x = torch.cat([b.x for b in inflight], dim=1)
            t = torch.cat([b.level() for b in inflight], dim=1).to(p.device)
            v = context.caller(inflight[-1].cond, x.shape[1])(x, t)
            for b, vb in zip(inflight, v.split(fpb, dim=1), strict=True):
                b.x = b.scheduler.step(vb, b.scheduler.timesteps[b.done], b.x, return_dict=False)[0]
                b.done += 1
            if inflight[0].done == settings.steps:  # the oldest is clean: out, then into the cache
                block = inflight.pop(0)
                latency = time.perf_counter() - block.began
                for i in range(fpb):
                    yield StreamFrame(produced, block.x[:, i], latency, context.kv_bytes)
                    produced += 1
                    if frames is not None and produced >= frames:
                        return
                context.commit(block.x, block.cond)
    finally:
        context.release()
