"""Drift of world models over long streams: per-frame PSNR, position error and object recall against the
simulator, averaged over held-out maps, plus the same numbers over horizon windows (10-50, 50-100, ...).

One action sequence for every model and map, one noise seed: the curves differ only by the model. The frozen
prompt frame (a stream that never moves) is the floor every model must beat.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from stretto.bench.report import new_figure, save_figure
from stretto.data import world
from stretto.eval.metrics import frame_psnr
from stretto.models.world_dit import WorldDiT
from stretto.pipelines.world import StreamSettings, model_steps

HORIZONS = ((10, 50), (50, 100), (100, 200), (200, 400))
FROZEN = "frozen prompt (baseline)"
CURVES = ("psnr_db", "position_error", "object_recall")


def _mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return round(float(finite.mean()), 3) if len(finite) else None


def curves(frames: torch.Tensor, truth: torch.Tensor, camera: torch.Tensor, prompt_camera: torch.Tensor,
           seeds: list[int]) -> dict:  # fmt: skip
    """(N, B, ...) generated and true frames, (N, B, 2) cameras -> per-frame curves (means over the B maps).

    object_recall counts the objects the prompt showed (`world.object_recall`): the ones a model can know.
    """
    psnr = frame_psnr(frames, truth).mean(1)
    position, recall = [], []
    for b, seed in enumerate(seeds):
        world_map, masks = world.draw_map(seed)
        known = world.visible_objects(masks, prompt_camera[:, b])
        position.append(world.position_error(frames[:, b], world_map, camera[:, b]))
        recall.append(world.object_recall(frames[:, b], truth[:, b], masks, camera[:, b], known))
    recall_mean = torch.stack(recall).nanmean(0)  # frames where no map shows an object stay NaN
    return {
        "psnr_db": [round(float(x), 2) for x in psnr],
        "position_error": [round(float(x), 2) for x in torch.stack(position).mean(0)],
        "object_recall": [None if math.isnan(x) else round(float(x), 3) for x in recall_mean],
    }


def horizon_windows(curve: dict, n_frames: int) -> dict:
    """Each per-frame curve averaged over the horizon windows the stream reaches."""
    out = {}
    for lo, hi in HORIZONS:
        if lo >= n_frames:
            break
        window = {}
        for key in CURVES:
            values = curve[key]
            v = np.array([np.nan if x is None else x for x in values[lo:hi]], dtype=float)
            window[key] = _mean(v)
        out[f"{lo}-{min(hi, n_frames)}"] = window
    return out


def run_drift(
    loaded: dict[str, WorldDiT],
    seeds: list[int],
    n_frames: int,
    steps: int | None,
    window: int,
    sinks: int,
    run_episode,
    context_noise: float = 0.0,
) -> tuple[dict, dict]:
    """Every model's kv-rolling stream over the same maps and actions, and the first model's with the pose memory
    -> ({name: curves + windows}, GIF panels)."""
    drift, panels = {}, {}
    runs = [(name, model, None) for name, model in loaded.items()]
    first = next(iter(loaded), None)
    if first is not None:  # the first model again with the pose memory (`pipelines.world_memory`)
        runs.append((f"{first} + pose memory", loaded[first], "pose"))
    for name, model, memory in runs:
        settings = StreamSettings(mode="kv-rolling", steps=steps, window=window, sinks=sinks, memory=memory,
                                  context_noise=context_noise)  # fmt: skip
        run = run_episode(model, seeds, n_frames, settings, seed=2, progress=f"drift {name}")
        drift[name] = curves(run.frames, run.truth, run.camera, run.prompt_camera, seeds)
        drift[name]["steps"] = steps or model_steps(model)
        if FROZEN not in drift:
            frozen = run.prompt[:, -1:].transpose(0, 1).expand_as(run.truth)
            drift[FROZEN] = curves(frozen, run.truth, run.camera, run.prompt_camera, seeds)
        panels.setdefault("simulator", run.truth[:, 0])
        panels[name] = run.frames[:, 0]
    for curve in drift.values():
        curve["windows"] = horizon_windows(curve, n_frames)
    return drift, panels


def plot_drift(drift: dict, path: str | Path) -> None:
    """PSNR, position error and object recall against the frame index, one line per model (10-frame means)."""
    _, fig, axes = new_figure(1, 3, figsize=(16, 4.2))
    keys = (("psnr_db", "PSNR vs simulator (dB)"), ("position_error", "position error (px)"),
            ("object_recall", "object recall"))  # fmt: skip
    for ax, (key, label) in zip(axes[0], keys, strict=True):
        for name, curve in drift["models"].items():
            v = np.array([np.nan if x is None else x for x in curve[key]], dtype=float)
            k = 10
            means = [np.nanmean(v[i : i + k]) if np.isfinite(v[i : i + k]).any() else np.nan for i in range(len(v) - k)]
            ax.plot(np.arange(len(means)) + k // 2, means, label=name, linestyle=":" if name == FROZEN else "-")
        ax.set_xlabel("frame index")
        ax.set_ylabel(label)
    axes[0][0].legend(fontsize=8)
    axes[0][1].set_title(f"drift: {drift['mode']}, mean of {drift['episodes']} held-out maps")
    save_figure(fig, path, dpi=130)


def revisit_paths(k: int) -> list[list[int]]:
    """Out and back in each direction: k moves away, k moves home (the prompt's place)."""
    index = world.ACTIONS.index
    return [[index(a)] * k + [index(b)] * k for a, b in ("RL", "LR", "DU", "UD")]


def revisit_frames(k: int, window: int) -> list[int]:
    """The frames of an out-and-back path that show a place last seen more than `window` frames before.

    Generated frame i is the view after action i: frame i >= k sits where frame 2k - 2 - i was (or the prompt,
    for the last frame), 2i - 2k + 2 frames earlier.
    """
    return [i for i in range(k, 2 * k) if 2 * i - 2 * k + 2 > window]


def run_revisit(
    model: WorldDiT,
    seeds: list[int],
    window: int,
    sinks: int,
    steps: int | None = None,
    k: int | None = None,
    context_noise: float = 0.0,
) -> dict:
    """PSNR against the simulator on the frames that revisit a place after it left the window, for the window
    alone and with the pose memory, over out-and-back paths on held-out maps (one batch row per map)."""
    from stretto.pipelines.world import stream

    k = k if k is not None else window + 2
    frames = revisit_frames(k, window)
    scores: dict[str, list[float]] = {"window_only_db": [], "with_memory_db": []}
    for path in revisit_paths(k):
        prompt, prompt_actions, episodes = world.prompt_block(seeds, [world.STAY, *path], 1)
        truth = torch.stack([e.frames[1:] for e in episodes], dim=1)  # (N, B, C, H, W)
        for key, memory in (("window_only_db", None), ("with_memory_db", "pose")):
            settings = StreamSettings(mode="kv-rolling", steps=steps, window=window, sinks=sinks, memory=memory,
                                      context_noise=context_noise)  # fmt: skip
            out = torch.stack([f.pixels for f in stream(model, prompt, prompt_actions, path, settings, seed=3)])
            scores[key].append(float(frame_psnr(out[frames], truth[frames]).mean()))
    result = {key: round(float(np.mean(v)), 2) for key, v in scores.items()}
    result["gain_db"] = round(result["with_memory_db"] - result["window_only_db"], 2)
    result.update(path_moves=k, revisit_frames=frames, window=window, sinks=sinks, maps=len(seeds),
                  paths=["".join(world.ACTIONS[a] for a in p[:1]) + "x" + str(k) + " and back"
                         for p in revisit_paths(k)])  # fmt: skip
    return result


@torch.no_grad()
def run_one_step(
    model: WorldDiT, seeds: list[int], n_frames: int, window: int, sinks: int, steps: int | None = None
) -> dict:
    """Next-frame prediction from the true past: each frame denoised with the simulator's frames (not the
    model's own) in the rolling cache. What a model can do when nothing has drifted yet; the gap to its own
    stream's numbers is what compounding errors cost. PSNR and object recall (objects the true past showed)."""
    from stretto.pipelines.world import denoise_block, few_step_timesteps, model_steps

    fpb, tpf = model.config.frames_per_block, model.config.tokens_per_frame
    actions = world.random_actions(n_frames + fpb, torch.Generator().manual_seed(2))
    episodes = [world.simulate(s, actions) for s in seeds]
    clips = torch.stack([e.frames for e in episodes])
    acts = torch.stack([e.actions for e in episodes])
    b = len(seeds)
    timesteps = few_step_timesteps(steps or model_steps(model))
    cache = model.new_cache(b, sinks + window, sinks)
    model(clips[:, :fpb], torch.zeros(b, fpb), acts[:, :fpb], kv_cache=cache, start=0, write=True)
    gen, predicted = torch.Generator().manual_seed(0), []
    for first in range(fpb, n_frames + fpb, fpb):
        block, a = slice(first, first + fpb), acts[:, first : first + fpb]
        start = cache.make_room(fpb * tpf)
        noise = torch.randn((len(timesteps), b, fpb, *clips.shape[2:]), generator=gen)
        call = lambda x, t, a=a, start=start: model(x, t, a, kv_cache=cache, start=start)  # noqa: E731
        predicted.append(denoise_block(call, noise, timesteps, clamp=model.x0_clamp))
        model(clips[:, block], torch.zeros(b, fpb), a, kv_cache=cache, start=start, write=True)  # the true frame
    pred, truth = torch.cat(predicted, dim=1), clips[:, fpb:]
    recall = []
    for i, (seed, episode) in enumerate(zip(seeds, episodes, strict=True)):
        _, masks = world.draw_map(seed)
        seen = world.visible_objects(masks, episode.camera[: fpb + n_frames])
        recall.append(world.object_recall(pred[i], truth[i], masks, episode.camera[fpb:], seen))
    return {
        "psnr_db": round(float(frame_psnr(pred, truth).mean()), 2),
        "object_recall": _mean(torch.stack(recall).flatten().numpy()),
        "frames": n_frames,
        "maps": b,
    }
