"""diffusers' built-in caches (diffusers.hooks, 0.42) on a stretto model's diffusers transformer.

stretto's benchmark runs them on the same model, sampler, prompts and seeds as its own policies. What each
needs from the caller, and how it is given here:
- FirstBlockCache, TaylorSeerCache, MagCache keep state per `cache_context`: the two CFG branches run as
  separate calls, each in its own context ("cond", "uncond"), so their states never mix.
- PyramidAttentionBroadcast and FasterCache keep one state per attention module and count iterations, so
  separate branch calls would hand the conditional attention to the unconditional call: they get one batched
  call per step, unconditional rows first (FasterCache's convention), and the current timestep (sigma x 1000,
  the scale diffusers' timestep ranges use) through `current_timestep_callback`.
- MagCache's ratios come from its own calibration mode (`calibrate_magcache`), printed by diffusers at the end
  of a full run.
"""

from __future__ import annotations

import ast
import contextlib
import io
from collections.abc import Sequence

import torch

from stretto.pipelines.image import Generation, GenerationStats, initial_noise
from stretto.sampling import flow_sigmas, get_sampler

CACHES = ("none", "firstblock", "taylorseer", "magcache", "pab", "fastercache")
BATCHED = ("pab", "fastercache")  # caches that need both CFG branches in one call (see above)


def make_config(name: str, params: dict, steps: int, timestep_now):
    """The diffusers config object for cache `name` with `params` (its own field names)."""
    from diffusers.hooks import (
        FasterCacheConfig,
        FirstBlockCacheConfig,
        MagCacheConfig,
        PyramidAttentionBroadcastConfig,
        TaylorSeerCacheConfig,
    )

    if name == "firstblock":
        return FirstBlockCacheConfig(**params)
    if name == "taylorseer":
        return TaylorSeerCacheConfig(**{"taylor_factors_dtype": torch.float32, **params})
    if name == "magcache":
        return MagCacheConfig(**{"num_inference_steps": steps, **params})
    if name == "pab":
        return PyramidAttentionBroadcastConfig(**{"current_timestep_callback": timestep_now, **params})
    if name == "fastercache":
        # Its unconditional-branch approximation (an FFT over an image-shaped output) needs (B, C, H, W) outputs;
        # this transformer returns (B, tokens, channels) and it fails on them, so only its attention reuse runs:
        # an empty timestep range switches the branch skipping off.
        defaults = {"current_timestep_callback": timestep_now, "tensor_format": "BCHW"}
        defaults |= {"attention_weight_callback": lambda _: 0.5}  # diffusers' example value for image models
        defaults |= {"unconditional_batch_timestep_skip_range": (-1, -1)}
        return FasterCacheConfig(**{**defaults, **params})
    raise ValueError(f"unknown diffusers cache {name!r}; choose one of {', '.join(CACHES)}")


@torch.no_grad()
def generate(
    net,
    prompts: Sequence[str],
    cache: str,
    params: dict | None = None,
    *,
    steps: int,
    sampler: str,
    guidance: float,
    seeds: Sequence[int],
) -> Generation:
    """`stretto.generate`'s CFG sampling loop with a diffusers cache enabled on `net.transformer`."""
    params = dict(params or {})
    transformer = net.transformer
    device = next(net.parameters()).device
    sigmas = flow_sigmas(steps).to(device)
    prompts = list(prompts)
    cond = net.encode_prompts(prompts)
    null = net.encode_prompts([""] * len(prompts))
    both = type(cond).cat([null, cond])
    now = {"t": 1000.0}
    batched = cache in BATCHED or cache == "none" and params.pop("batched", False)
    stats = GenerationStats()

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        stats.model_calls += 1
        now["t"] = float(sigma) * 1000
        if batched:
            with transformer.cache_context("cfg"):
                v_uncond, v_cond = net(torch.cat([x, x]), sigma, both).chunk(2)
        else:
            with transformer.cache_context("cond"):
                v_cond = net(x, sigma, cond)
            with transformer.cache_context("uncond"):
                v_uncond = net(x, sigma, null)
        return v_uncond + guidance * (v_cond - v_uncond)

    if cache != "none":
        transformer.enable_cache(make_config(cache, params, steps, lambda: now["t"]))
    try:
        images = get_sampler(sampler)(denoiser, initial_noise(seeds, device), sigmas)
    finally:
        if cache != "none":
            transformer.disable_cache()
    stats.sampler_nfe = stats.model_calls
    return Generation(images.clamp(-1, 1).cpu(), stats)


def calibrate_magcache(net, prompts: Sequence[str], *, steps: int, sampler: str, guidance: float, seeds) -> list[float]:
    """diffusers' MagCache calibration (a full run in calibrate mode); the conditional branch's ratios."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        generate(net, prompts, "magcache", {"calibrate": True}, steps=steps, sampler=sampler, guidance=guidance,
                 seeds=seeds)  # fmt: skip
    lines = [line for line in out.getvalue().splitlines() if line.startswith("[") and "MagCache" not in line]
    lists = [ast.literal_eval(line) for line in lines]
    if not lists:
        raise RuntimeError("diffusers' MagCache calibration printed no ratios (has its output format changed?)")
    return [float(r) for r in lists[0]]
