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
) -> tuple[dict, dict]:
    """Every model's kv-rolling stream over the same maps and actions -> ({name: curves + windows}, GIF panels)."""
    drift, panels = {}, {}
    for name, model in loaded.items():
        settings = StreamSettings(mode="kv-rolling", steps=steps, window=window, sinks=sinks)
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
