"""`stretto bench stream`: frames/s, latency and drift of the world model under each way of keeping the past.

Rows: mode x model x stream length, each a single held-out episode at batch 1 (a user's stream), with
`{"mode", "model", "frames", "fps", "first_frame_ms", "latency_ms_p50", "latency_ms_p95",
"latency_ms_p95_first10pct", "latency_ms_p95_last10pct", "kv_bytes_peak", "psnr_db_vs_sim", "position_error"}`.
- latency: from the moment a block's action is known to its frames being ready (the commit of the previous
  block counts toward fps, not toward this latency: it runs while the user looks at the frame);
- kv_bytes_peak: K/V bytes in use at the fullest point (0 for recompute, which keeps frames, not K/V);
- psnr_db_vs_sim: mean per-frame PSNR against the simulator's frames for the same actions;
- position_error: mean distance in pixels between the camera position that best explains each generated frame
  (searched over the whole map) and the true one: did the model follow the actions?
Plus a drift curve: PSNR against the simulator vs frame index, averaged over several episodes, for the
teacher-forced and the Self-Forcing model (kv-rolling). Speeds are wall time within this one run.
Causal video models on diffusers' classes add rows (`stretto.bench.stream_video`: a tiny causal Wan, and
SkyReels-V2 beside its own diffusers pipeline). Every row also carries the feature-cache contract keys:
`"feature_cache"` (the policy applied inside the stream, "none"), `"speedup_vs_uncached"` and `"psnr_loss_db"`
(against the uncached stream of the same model and settings: 1.0 and 0.0 for an uncached row). Feature-cache rows
(`--feature-cache`, `stretto.bench.stream_cache`): every policy inside the kv-rolling stream of each world model and
of the tiny causal Wan at the shortest length, run alternately with the uncached stream; they add the PSNR against
the uncached frames, CPU-time speedups and block evaluations per frame.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from stretto import checkpoints
from stretto.bench.drift import plot_drift, run_drift, run_one_step, run_revisit
from stretto.bench.report import describe_machine, new_figure, save_figure, table_header, table_row, write_json
from stretto.bench.stream_cache import DEFAULT_FEATURE_CACHES, StreamRun, feature_cache_rows
from stretto.bench.stream_cache import TABLE as CACHE_TABLE
from stretto.bench.stream_video import anyflow_rows, causal_wan_cache_rows, causal_wan_rows, skyreels_rows
from stretto.data import world
from stretto.eval.metrics import frame_psnr
from stretto.models.world_dit import WorldDiT
from stretto.pipelines.world import DEFAULT_KV_BUDGET_MIB, DEFAULT_STEPS, MODES, StreamSettings, model_steps, stream

HELD_OUT_SEED = 10**6  # training draws map seeds below 10**6
DEFAULT_MODELS = ("world-tf", "world-sf")
VIDEO_MODELS = ("causal-wan", "skyreels-v2", "anyflow-far")
SIDE_BY_SIDE_FRAMES = 24  # frames of the rows beside diffusers' own pipelines
QUALITY_SEEDS = list(range(HELD_OUT_SEED, HELD_OUT_SEED + 8))  # held-out maps scoring each feature cache
UNCACHED = {"feature_cache": "none", "speedup_vs_uncached": 1.0, "psnr_loss_db": 0.0}  # no feature cache yet


@dataclass
class EpisodeRun:
    frames: torch.Tensor  # (N, B, C, H, W) generated
    prompt: torch.Tensor  # (B, F, C, H, W) the ground-truth first block
    truth: torch.Tensor  # (N, B, C, H, W) simulator
    camera: torch.Tensor  # (N, B, 2) true camera positions
    prompt_camera: torch.Tensor  # (F, B, 2) the prompt block's camera positions
    worlds: list[torch.Tensor]
    latency_s: np.ndarray  # per frame
    first_frame_s: float
    total_s: float
    kv_bytes_peak: int
    cpu_s: float = 0.0  # process CPU time of the stream


def run_episode(model: WorldDiT, seeds: list[int], n_frames: int, settings: StreamSettings, seed: int = 0,
                progress: str | None = None, noise_seed: int | None = None) -> EpisodeRun:  # fmt: skip
    """Stream n_frames frames for the maps `seeds` (one row each) along one random action sequence (drawn from
    `seed`, like the stream's noise unless `noise_seed` is given)."""
    device = next(model.parameters()).device
    fpb = model.config.frames_per_block
    actions = world.random_actions(n_frames + fpb, torch.Generator().manual_seed(seed))
    prompt, prompt_actions, episodes = world.prompt_block(seeds, actions, fpb)
    frames, latency, peak = [], [], 0
    began, began_cpu = time.perf_counter(), time.process_time()
    first = None
    noise_seed = seed if noise_seed is None else noise_seed
    gen = stream(
        model, prompt.to(device), prompt_actions.to(device), actions[fpb:], settings, seed=noise_seed, frames=n_frames
    )
    for frame in tqdm(gen, total=n_frames, desc=progress, leave=False, disable=progress is None):
        first = first if first is not None else time.perf_counter() - began
        frames.append(frame.pixels.cpu())
        latency.append(frame.latency_s)
        peak = max(peak, frame.kv_bytes)
    total, cpu = time.perf_counter() - began, time.process_time() - began_cpu
    truth = torch.stack([e.frames[fpb : fpb + n_frames] for e in episodes], dim=1)
    camera = torch.stack([e.camera[fpb : fpb + n_frames] for e in episodes], dim=1)
    prompt_camera = torch.stack([e.camera[:fpb] for e in episodes], dim=1)
    return EpisodeRun(torch.stack(frames), prompt, truth, camera, prompt_camera, [e.world for e in episodes],
                      np.array(latency), first, total, peak, cpu)  # fmt: skip


def position_error(run: EpisodeRun) -> float:
    errors = [world.position_error(run.frames[:, b], w, run.camera[:, b]) for b, w in enumerate(run.worlds)]
    return float(torch.cat(errors).mean())


def row_of(mode: str, model_name: str, run: EpisodeRun, settings: StreamSettings) -> dict:
    lat_ms = run.latency_s * 1000
    n = len(lat_ms)
    tenth = max(1, n // 10)
    return {
        "mode": mode,
        "model": model_name,
        "frames": n,
        "fps": round(n / run.total_s, 2),
        "first_frame_ms": round(run.first_frame_s * 1000, 2),
        "latency_ms_p50": round(float(np.percentile(lat_ms, 50)), 2),
        "latency_ms_p95": round(float(np.percentile(lat_ms, 95)), 2),
        "latency_ms_p95_first10pct": round(float(np.percentile(lat_ms[:tenth], 95)), 2),
        "latency_ms_p95_last10pct": round(float(np.percentile(lat_ms[-tenth:], 95)), 2),
        "kv_bytes_peak": run.kv_bytes_peak,
        "psnr_db_vs_sim": round(float(frame_psnr(run.frames, run.truth).mean()), 2),
        "position_error": round(position_error(run), 2),
        "window": settings.window,
        "sinks": settings.sinks if settings.window is not None else 0,
        "steps": settings.steps,
        "seconds": round(run.total_s, 2),
    }


def settings_for(
    mode: str,
    frames: int,
    steps: int,
    window: int,
    sinks: int,
    kv_budget_mib: float = DEFAULT_KV_BUDGET_MIB,
    context_noise: float = 0.0,
) -> StreamSettings:
    """kv: a cache of the whole stream; kv-rolling: window + sinks; recompute: the whole context when short,
    the kv-rolling window when long (re-running 2,000 frames of context per call would take hours)."""
    if mode == "kv":
        settings = StreamSettings(mode="kv", steps=steps, window=None, max_frames=frames + 1,
                                  kv_budget_mib=kv_budget_mib)  # fmt: skip
    elif mode == "kv-rolling" or frames > 64:
        settings = StreamSettings(mode=mode, steps=steps, window=window, sinks=sinks, kv_budget_mib=kv_budget_mib)
    else:
        settings = StreamSettings(mode="recompute", steps=steps, window=None)
    return replace(settings, context_noise=context_noise)


def run_stream_bench(
    json_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    models: tuple[str, ...] = DEFAULT_MODELS,
    lengths: tuple[int, ...] = (64, 2000),
    modes: tuple[str, ...] = MODES,
    steps: int | None = None,
    window: int = 8,
    sinks: int = 1,
    drift_episodes: int = 8,
    drift_frames: int = 400,
    device: str = "cpu",
    gif_path: str | Path | None = None,
    gif_frames: int = 240,
    kv_budget_mib: float = DEFAULT_KV_BUDGET_MIB,
    video_models: tuple[str, ...] = VIDEO_MODELS,
    feature_caches: tuple[str, ...] = DEFAULT_FEATURE_CACHES,
    cache_repeats: int = 3,
    drift_only: bool = False,
    context_noise: float = 0.0,
) -> dict:
    """Every mode x model x length row, the video models' rows, the feature-cache rows (each policy against the
    uncached kv-rolling stream at the shortest length, `stretto.bench.stream_cache`), then the drift curves."""
    loaded = {name: checkpoints.load(name, device=device, kind=WorldDiT.kind) for name in models}
    rows = []
    if drift_only:
        lengths, video_models, feature_caches = (), (), ()
    else:
        print(table_header(TABLE))
    for n in lengths:
        for mode in modes:
            for name, model in loaded.items():
                settings = settings_for(mode, n, steps or model_steps(model), window, sinks, kv_budget_mib,
                                        context_noise)  # fmt: skip
                run = run_episode(model, [HELD_OUT_SEED], n, settings, seed=1, progress=f"{mode} {name} {n}")
                rows.append(row_of(mode, name, run, settings))
                print(table_row(rows[-1], TABLE))
    show = lambda row: print(table_row(row, TABLE))  # noqa: E731
    video_steps = steps or DEFAULT_STEPS
    if "causal-wan" in video_models:
        rows += causal_wan_rows(lengths, modes, video_steps, window, sinks, show)
    # diffusers' pipelines re-run a growing past: keep their side-by-side streams short
    side_by_side = min(*lengths, SIDE_BY_SIDE_FRAMES) if lengths else 0
    if "skyreels-v2" in video_models:
        rows += skyreels_rows(side_by_side, video_steps, window, sinks, show)
    if "anyflow-far" in video_models:
        rows += anyflow_rows(side_by_side, video_steps, window, sinks, show)
    rows = [{**row, **UNCACHED} for row in rows]
    if feature_caches and lengths:
        rows += cache_rows(loaded, video_models, min(lengths), steps, window, sinks, kv_budget_mib, feature_caches,
                           cache_repeats, context_noise)  # fmt: skip
    seeds = list(range(HELD_OUT_SEED + 1, HELD_OUT_SEED + 1 + drift_episodes))
    drift, panels = run_drift(loaded, seeds, drift_frames, steps, window, sinks, run_episode, context_noise)
    panels = {name: frames[:gif_frames] for name, frames in panels.items()}
    revisit = {name: run_revisit(model, seeds, window, sinks, steps, context_noise=context_noise)
               for name, model in loaded.items()}  # fmt: skip
    for name, model in loaded.items():  # the same models predicting from the true past, for comparison
        drift[name]["one_step_from_truth"] = run_one_step(model, seeds, min(drift_frames, 100), window, sinks, steps)
    for name, r in revisit.items():
        print(f"revisit {name}: window only {r['window_only_db']} dB, with memory {r['with_memory_db']} dB "
              f"(gain {r['gain_db']} dB)")  # fmt: skip
    if gif_path and panels:
        from stretto.images import save_gif

        save_gif(list(panels.values()), gif_path, fps=12, scale=4)
        print(f"wrote {gif_path}: {' | '.join(panels)} (drift episode 0, first {gif_frames} frames)")
    command = f"stretto bench stream --models {' '.join(models)} --window {window} --sinks {sinks}"
    command += f" --steps {steps}" if steps else ""
    command += " --drift-only" if drift_only else " --frames " + " ".join(map(str, lengths))
    # every other option that differs from its default, so the recorded command reruns this run
    options = {"--modes": (tuple(modes), MODES), "--video-models": (tuple(video_models), VIDEO_MODELS),
               "--feature-cache": (tuple(feature_caches), DEFAULT_FEATURE_CACHES)}  # fmt: skip
    for flag, (value, default) in options.items():
        if not drift_only and value != tuple(default):
            command += f" {flag} " + " ".join(value)
    numbers = (("--cache-repeats", cache_repeats, 3), ("--drift-episodes", drift_episodes, 8),
               ("--drift-frames", drift_frames, 400), ("--context-noise", context_noise, 0.0))  # fmt: skip
    for flag, value, default in numbers:
        command += f" {flag} {value}" if value != default else ""
    result = {
        "machine": describe_machine(device),
        "command": command,
        "held_out_map_seed": HELD_OUT_SEED,
        "rows": rows,
        "drift": {"mode": "kv-rolling", "episodes": drift_episodes, "frames": drift_frames, "models": drift},
    }
    if revisit:  # the top-level numbers are the first model's (the stream's default model first by default)
        result["revisit"] = {**next(iter(revisit.values())), "model": next(iter(revisit)), "models": revisit}
    if json_path:
        write_json(result, json_path)
    if plot_path:
        if drift_only:
            plot_drift(result["drift"], plot_path)
        else:  # the timed rows and PSNR drift; the three drift curves beside it (world models only)
            plot_stream_bench(result, plot_path)
            if drift:
                plot_drift(result["drift"], Path(plot_path).with_name(Path(plot_path).stem + "-drift.png"))
    return result


def cache_rows(
    loaded: dict[str, WorldDiT],
    video_models: tuple[str, ...],
    n: int,
    steps: int | None,
    window: int,
    sinks: int,
    kv_budget_mib: float,
    policies: tuple[str, ...],
    repeats: int,
    context_noise: float = 0.0,
) -> list[dict]:
    """Each policy inside each world model's kv-rolling stream of n frames (and the tiny causal Wan's), against
    the uncached stream of the same model and settings, run alternately `repeats` times; the world models' PSNRs
    over the 8 held-out episodes of QUALITY_SEEDS (batch rows of one untimed stream)."""
    rows: list[dict] = []
    show = lambda row: print(table_row(row, CACHE_TABLE))  # noqa: E731
    print(table_header(CACHE_TABLE))
    for name, model in loaded.items():
        settings = settings_for("kv-rolling", n, steps or model_steps(model), window, sinks, kv_budget_mib,
                                context_noise)  # fmt: skip

        def run(spec: str | None, noise_seed: int, model=model, name=name, settings=settings) -> StreamRun:
            cached = replace(settings, feature_cache=spec)
            episode = run_episode(model, [HELD_OUT_SEED], n, cached, seed=1, noise_seed=noise_seed)
            return StreamRun(episode.frames, episode.total_s, episode.cpu_s,
                             lambda: row_of("kv-rolling", name, episode, cached))  # fmt: skip

        def quality(spec: str | None, noise_seed: int, model=model, settings=settings) -> tuple[torch.Tensor, float]:
            cached = replace(settings, feature_cache=spec)
            episode = run_episode(model, QUALITY_SEEDS, n, cached, seed=1, noise_seed=noise_seed)
            return episode.frames, float(frame_psnr(episode.frames, episode.truth).mean())

        rows += feature_cache_rows(run, model.blocks, policies, repeats, True, 1, show, quality)
    if "causal-wan" in video_models:
        rows += causal_wan_cache_rows(n, steps or DEFAULT_STEPS, window, sinks, policies, repeats, show)
    return rows


TABLE = [
    ("mode", "mode", "<18"), ("model", "model", "<26"), ("frames", "frames", ">6"), ("fps", "fps", ">7.1f"),
    ("first ms", "first_frame_ms", ">8.1f"), ("p50 ms", lambda r: _num(r["latency_ms_p50"]), ">7.1f"),
    ("p95 ms", lambda r: _num(r["latency_ms_p95"]), ">7.1f"),
    ("p95 first10%", lambda r: _num(r["latency_ms_p95_first10pct"]), ">12.1f"),
    ("p95 last10%", lambda r: _num(r["latency_ms_p95_last10pct"]), ">11.1f"),
    ("KV MiB", lambda r: _num(r["kv_bytes_peak"]) / 2**20, ">7.1f"),
    ("PSNR dB", lambda r: _num(r["psnr_db_vs_sim"]), ">7.1f"),
    ("pos err px", lambda r: _num(r["position_error"]), ">10.1f"),
]  # fmt: skip


def _num(value) -> float:
    """A row's number, NaN where the row has none (video rows: no simulator to compare with)."""
    return float("nan") if value is None else value


def plot_stream_bench(result: dict, plot_path: str | Path) -> None:
    cached = [r for r in result["rows"] if r["feature_cache"] != "none"]
    _, fig, axes = new_figure(1, 3 if cached else 2, figsize=(18 if cached else 12, 4.2))
    ax_fps, ax_drift = axes[0][:2]
    rows = [r for r in result["rows"] if r["feature_cache"] == "none"]
    labels = [f"{r['mode']}\n{r['model']}, {r['frames']}" for r in rows]
    colours = {"recompute": "tab:gray", "kv": "tab:blue", "kv-rolling": "tab:green", "diffusers-pipeline": "tab:red"}
    ax_fps.barh(range(len(rows)), [r["fps"] for r in rows], color=[colours[r["mode"]] for r in rows])
    ax_fps.set_yticks(range(len(rows)), labels, fontsize=7)
    ax_fps.invert_yaxis()
    for i, r in enumerate(rows):
        psnr = "" if r["psnr_db_vs_sim"] is None else f", {r['psnr_db_vs_sim']:.1f} dB"
        ax_fps.text(r["fps"], i, f" {r['fps']:.1f} fps{psnr}", va="center", fontsize=7)
    ax_fps.set_xlabel("frames / s (batch 1; denoising steps per frame: each row's)")
    ax_fps.set_title("throughput by mode")
    drift = result["drift"]
    for name, d in drift["models"].items():
        psnr = np.array(d["psnr_db"])
        k = 10
        smooth = np.convolve(psnr, np.ones(k) / k, mode="valid")
        ax_drift.plot(np.arange(len(smooth)) + k // 2, smooth, label=name)
    ax_drift.set_xlabel("frame index")
    ax_drift.set_ylabel("PSNR vs simulator (dB)")
    ax_drift.set_title(f"drift: {drift['mode']}, mean of {drift['episodes']} episodes")
    if drift["models"]:
        ax_drift.legend()
    if cached:
        plot_feature_caches(axes[0][2], cached)
    save_figure(fig, plot_path, dpi=130)


def plot_feature_caches(ax, rows: list[dict]) -> None:
    """Speedup against PSNR vs the uncached frames, one marker per model, each point labelled with its policy:
    filled, the pooled PSNR (set by the frames where the streams went different ways); hollow, the median frame's
    (rows written before that key have only the first)."""
    for model, marker in zip(dict.fromkeys(r["model"] for r in rows), "osD^v", strict=False):
        mine = [r for r in rows if r["model"] == model]
        xs, ys = [r["speedup_vs_uncached"] for r in mine], [min(r["psnr_db_vs_uncached"], 60) for r in mine]
        dots = ax.scatter(xs, ys, marker=marker, label=f"{model} (reseed: {mine[0]['seed_psnr_db']:.0f} dB)")
        if all("psnr_db_vs_uncached_median" in r for r in mine):
            medians = [min(r["psnr_db_vs_uncached_median"], 60) for r in mine]
            colour = dots.get_facecolor()[0]
            ax.scatter(xs, medians, marker=marker, facecolors="none", edgecolors=[colour],
                       label=f"  median frame (reseed: {mine[0]['seed_psnr_db_median']:.0f} dB)")  # fmt: skip
            ax.vlines(xs, ys, medians, colors=[colour], lw=0.5, alpha=0.5)
        for r, x, y in zip(mine, xs, ys, strict=True):
            ax.annotate(r["feature_cache"].split(",refresh")[0].split(",warmup=0,max")[0], (x, y), fontsize=5)
    ax.axvline(1.5, color="gray", lw=0.5, ls="--")
    ax.set_xlabel("speedup vs the uncached stream (frames/s, interleaved)")
    ax.set_ylabel("PSNR vs the uncached frames (dB)")
    ax.set_title("feature caching inside the stream (kv-rolling)")
    ax.legend(fontsize=7)
