"""`stretto bench cache`: every cache policy, diffusers' and cache-dit's caches, against full compute on one model.

One run, one model, one sampler setting, the same prompts and seeds for every row. Quality is measured against
the full-compute output of the same setting (PSNR, SSIM), and as distributions (FID on the shapes classifier's
features, prompt accuracy). Cost is counted, not only timed: a row's compute fraction is the work its blocks
really did (attention and MLP tokens, `ComputeCounter`; on a UNet the MACs of its convolutions and linear
layers, `MacCounter`) over the full run's, so `speedup_ideal` is what the skipped compute promises and
`speedup_wall` what this noisy 2-core machine delivered in the same run.
A UNet model (`shapes-unet`) runs the UNet policies (DeepCache, Faster Diffusion); diffusers' and cache-dit's
caches are made for transformer blocks, so a UNet run is stretto's engine only.

Calibrated policies (TeaCache's polynomial, MagCache's ratios, diffusers' MagCache ratios) are calibrated in
the run, on calibration prompts and seeds that are not the evaluation ones. cache-dit (the `[compare]` extra)
is the third engine when it is installed (bench/cachedit_caches.py says how it is attached).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

import stretto
from stretto.bench import cachedit_caches, diffusers_caches
from stretto.bench.report import describe_machine, new_figure, print_table, save_figure, write_json
from stretto.cache import parse_policy
from stretto.data.shapes import evaluation_prompts
from stretto.eval.classifier import prompt_accuracy
from stretto.eval.metrics import FeatureFID, psnr_db, ssim
from stretto.eval.timing import ComputeCounter, MacCounter, StackTimer
from stretto.pipelines.image import DEFAULT_GUIDANCE
from stretto.tune.calibrate import calibrate_magcache, calibrate_teacache

SEARCH_RESULT = "benchmarks/results/cache-search.json"  # `stretto search cache` output, used when it fits
CALIBRATION_PROMPTS = 8
CALIBRATION_SEED = 10_000  # calibration prompts and seeds differ from the evaluation ones
ENGINES = ("stretto", "diffusers", "cache-dit")


def stretto_settings(calib: dict[str, str], sampler: str, steps: int) -> list[str]:
    """stretto's policies, 3-4 settings each, from cautious to aggressive (`calib` fills calibrated values)."""
    settings = [
        "fora:interval=2", "fora:interval=3", "fora:interval=4", "fora:interval=6",
        "delta:cached=3,interval=2", "delta:cached=4,interval=3", "delta:cached=5,interval=4",
        "firstblock:threshold=0.05", "firstblock:threshold=0.1", "firstblock:threshold=0.2",
        "dbcache:first=1,last=1,threshold=0.1,warmup=4", "dbcache:first=1,last=1,threshold=0.2,warmup=4",
        "dbcache:first=1,last=1,threshold=0.4,warmup=4",
        "dbcache:first=1,last=0,threshold=0.1,warmup=4,joint=true",
        "dbcache:first=1,last=0,threshold=0.2,warmup=4,joint=true",
        "taylor:order=1,interval=3", "taylor:order=1,interval=5", "taylor:order=2,interval=4",
        "taylor:order=1,interval=7", "taylor:order=1,interval=6,warmup=2,final=true",
        "taylor:order=1,interval=4,warmup=2,final=true",
        "taylor:order=2,interval=3,warmup=4,final=true", "taylor:order=2,interval=3,first=1,warmup=4,final=true",
        "taylor:order=1,interval=3,first=1,warmup=4,final=true",
        "taylor:order=1,interval=4,first=1,warmup=4,final=true",
        "taylor:order=1,interval=4,warmup=4,final=true", "taylor:order=1,interval=5,warmup=4,final=true",
        "gatedtaylor:threshold=0.03,max_forecast=10", "gatedtaylor:threshold=0.05,max_forecast=8",
        "gatedtaylor:threshold=0.1,max_forecast=10",
        "toca:interval=3,ratio=0.25", "toca:interval=3,ratio=0.1", "toca:interval=4,ratio=0.1",
        "ras:ratio=0.25,full_every=4", "ras:ratio=0.1,full_every=4", "ras:ratio=0.1,full_every=6",
    ]  # fmt: skip
    if "magcache" in calib:
        settings += [f"magcache:threshold={t},max_skip={m},ratios={calib['magcache']}"
                     for t, m in ((0.06, 2), (0.12, 3), (0.3, 4), (0.5, 6))]  # fmt: skip
    if "teacache" in calib:
        settings += [f"teacache:threshold={t},coefficients={calib['teacache']}" for t in (0.1, 0.2, 0.3, 0.5)]
        settings += [f"teacache:threshold={t},coefficients={calib['teacache']},joint=true" for t in (0.2, 0.3)]
    search = Path(SEARCH_RESULT)
    if search.exists():
        found = json.loads(search.read_text())
        if found.get("sampler") == sampler and found.get("steps") == steps:  # masks are per step of one schedule
            settings += [f"schedule:file={search},min_psnr={p}" for p in (40, 35, 30)]
    return settings


def unet_settings(steps: int) -> list[str]:
    """The UNet policies: DeepCache at several intervals and depths, Faster Diffusion (paper keys when the run
    has the paper's 50 steps, else uniform)."""
    settings = [f"deepcache:interval={n}" for n in (2, 3, 4, 5)] + ["deepcache:interval=3,depth=2"]
    settings += ["fasterdiffusion:interval=2", "fasterdiffusion:interval=3"]
    return settings + (["fasterdiffusion"] if steps == 50 else [])


def diffusers_settings(calib: dict[str, list[float]]) -> list[tuple[str, dict]]:
    """diffusers' built-in caches at 3-4 settings each (their own parameter names)."""
    settings: list[tuple[str, dict]] = [("firstblock", {"threshold": t}) for t in (0.05, 0.1, 0.2, 0.4)]
    settings += [("taylorseer", {"cache_interval": n, "max_order": o}) for n, o in ((3, 1), (4, 2), (6, 2))]
    settings += [("taylorseer", {"cache_interval": n, "max_order": 2, "use_lite_mode": True}) for n in (4, 6)]
    if "magcache" in calib:
        settings += [("magcache", {"threshold": t, "max_skip_steps": m, "mag_ratios": calib["magcache"]})
                     for t, m in ((0.06, 2), (0.12, 3), (0.24, 4), (0.5, 6))]  # fmt: skip
    settings += [("pab", {"spatial_attention_block_skip_range": n, "spatial_attention_timestep_skip_range": (0, 1000)})
                 for n in (2, 3, 4)]  # fmt: skip
    settings += [("fastercache", {})]
    return settings


@dataclass
class Run:
    images: torch.Tensor
    wall_s: float
    work: int  # attention + MLP tokens the blocks computed (ComputeCounter), or a UNet's MACs (MacCounter)
    stack_s: float | None = None  # of wall_s, the time inside the block stack (StackTimer), when timed


class CacheBench:
    """The model, the evaluation prompts and the quality metrics; runs one setup's rows."""

    def __init__(self, model: str, device, num_images: int, guidance: float):
        self.net = stretto.load(model, device=device)
        self.classifier = stretto.load("shapes-classifier", device=device)
        self.fid = FeatureFID(self.classifier)
        self.device, self.guidance = torch.device(device), guidance
        self.prompts = evaluation_prompts(num_images)
        self.seeds = list(range(num_images))
        self.unet = getattr(self.net, "unet", None)

    def counter(self) -> ComputeCounter | MacCounter:
        return MacCounter(self.unet) if self.unet is not None else ComputeCounter(self.net.blocks)

    def stack_timer(self) -> StackTimer:
        """Times the block stack: a transformer's blocks, a UNet's down blocks to its up blocks."""
        if self.unet is not None:
            return StackTimer(self.unet.down_blocks[0], self.unet.up_blocks[-1], self.device)
        return StackTimer(self.net.blocks[0], self.net.blocks[-1], self.device)

    def timed(self, fn: Callable[[], torch.Tensor], time_stack: bool = False) -> Run:
        timer = self.stack_timer() if time_stack else nullcontext()
        with self.counter() as counter, timer:
            start = time.perf_counter()
            images = fn()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - start
        return Run(images, seconds, counter.work, timer.seconds if time_stack else None)

    def run(self, engine: str, name: str, params, sampler: str, steps: int, time_stack: bool = False) -> Run:
        kw = dict(steps=steps, sampler=sampler, guidance=self.guidance, seeds=self.seeds)
        if engine == "stretto":
            cache = None if name == "none" else params
            return self.timed(lambda: stretto.generate(self.net, self.prompts, cache=cache, **kw).images, time_stack)
        if engine == "cache-dit":  # attached and removed inside the timed part, like the other engines' caches
            return self.timed(lambda: cachedit_caches.generate_with(self.net, self.prompts, name, params, **kw).images)
        return self.timed(lambda: diffusers_caches.generate(self.net, self.prompts, name, params, **kw).images)

    def calibrate(self, sampler: str, steps: int) -> tuple[dict[str, str], dict[str, list[float]]]:
        """TeaCache's polynomial and MagCache's ratios for stretto, and diffusers' MagCache ratios by its own
        calibration, on calibration prompts and seeds."""
        prompts = evaluation_prompts(CALIBRATION_PROMPTS, seed=CALIBRATION_SEED)
        kw = dict(steps=steps, sampler=sampler, guidance=self.guidance)
        kw["seeds"] = list(range(CALIBRATION_SEED, CALIBRATION_SEED + CALIBRATION_PROMPTS))
        ours = {
            "teacache": calibrate_teacache(self.net, prompts, **kw).coefficients_text,
            "magcache": calibrate_magcache(self.net, prompts, **kw).ratios_text,
        }
        try:
            theirs = {"magcache": diffusers_caches.calibrate_magcache(self.net, prompts, **kw)}
        except RuntimeError as err:  # e.g. no ratios printed for this schedule: lose its rows, not the run
            print(f"{sampler} {steps}: {err}; diffusers' MagCache rows are left out of this setup")
            theirs = {}
        return ours, theirs

    def setup_rows(self, sampler: str, steps: int, jobs: list[tuple[str, str, object]]) -> list[dict]:
        """Full-compute references and every job at one (sampler, steps), as result rows."""
        none = {"stretto": ("stretto", "none", None)}
        if self.unet is None:  # diffusers' own loops, full compute: the references of its caches' rows
            none["separate"] = ("diffusers", "none", {})
            none["batched"] = ("diffusers", "none", {"batched": True})
        self.run(*none["stretto"], sampler, steps)  # warm-up: the first timed run would pay one-off costs
        again = [cfg for cfg in ("stretto", "separate") if cfg in none]
        bar = tqdm(total=len(jobs) + len(none) + len(again), desc=f"bench cache {sampler} {steps}")
        refs: dict[str, list[Run]] = {}
        for cfg, job in none.items():
            refs[cfg] = [self.run(*job, sampler, steps)]
            bar.update()
        results = []
        for job in jobs:
            bar.set_postfix_str(f"{job[0]} {job[1]}"[:60])
            results.append((cfg_mode(*job[:2]), job, self.run(*job, sampler, steps)))
            bar.update()
        # Full compute again at the end: on a shared machine the wall-time reference is the mean of both.
        for cfg in again:
            refs[cfg].append(self.run(*none[cfg], sampler, steps))
            bar.update()
        bar.close()
        ref_wall = {cfg: sum(r.wall_s for r in runs) / len(runs) for cfg, runs in refs.items()}
        ref_wall["cache-dit"] = ref_wall["stretto"]  # the same loop and calls, cache-dit attached instead
        reference = refs["stretto"][0]
        full_evals = steps * 2 * len(self.net.blocks)  # per image: steps x CFG branches x blocks
        quality = Quality(reference.images, self.prompts, self.fid, self.classifier)
        out = []
        for cfg, (engine, name, params), run in [(cfg, job, refs[cfg][0]) for cfg, job in none.items()] + results:
            fraction = run.work / reference.work
            out.append({
                "engine": engine,
                "policy": policy_name(engine, name),
                "params": params_text(engine, name, params),
                "sampler": sampler,
                "steps": steps,
                "cfg": cfg,
                "block_evals": fraction * full_evals,
                "block_evals_full": full_evals,
                "compute_fraction": fraction,
                "wall_s": run.wall_s,
                "speedup_wall": ref_wall[cfg] / run.wall_s,
                "speedup_ideal": 1 / fraction,
                **quality(run.images),
                **({"note": FASTERCACHE_NOTE} if name == "fastercache" else {}),
            })  # fmt: skip
        return out


def run_cache_bench(
    json_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    model: str = "shapes-flux",
    device: str | torch.device = "cpu",
    num_images: int = 128,
    guidance: float = DEFAULT_GUIDANCE,
    setups: tuple[tuple[str, int], ...] = (("euler", 50), ("dpm++2m", 20)),
    policies: list[str] | None = None,
    engines: tuple[str, ...] = ENGINES,
    calibrate: bool = True,
) -> dict:
    """Run the benchmark, write JSON (and a plot), return the result dict.

    `policies` restricts the rows to those policy names (every engine); the first setup gets every setting,
    the others one middle setting per policy. cache-dit's engine is skipped, saying so, when it is not installed.
    """
    if num_images < 2:
        raise ValueError(f"num_images must be >= 2 (FID needs a covariance), got {num_images}")
    bad_engines = [e for e in engines if e not in ENGINES]
    if bad_engines or not engines:
        raise ValueError(f"unknown engine(s) {bad_engines or engines}; allowed: {', '.join(ENGINES)}")
    if "cache-dit" in engines and not cachedit_caches.available():
        print(f"cache-dit is not installed ({cachedit_caches.INSTALL_HINT}): skipping its engine")
        engines = tuple(e for e in engines if e != "cache-dit")
        if not engines:
            raise ValueError("no engine left to run: cache-dit is not installed")
    bench = CacheBench(model, device, num_images, guidance)
    if bench.unet is not None and engines != ("stretto",):
        print(f"{model} is a UNet: diffusers' and cache-dit's caches run on transformer blocks; stretto's engine only")
        engines, calibrate = ("stretto",), False
    rows: list[dict] = []
    calibrations: dict[str, dict] = {}
    for setup_i, (sampler, steps) in enumerate(setups):
        calib_stretto, calib_diffusers = bench.calibrate(sampler, steps) if calibrate else ({}, {})
        calibrations[f"{sampler} {steps}"] = {"stretto": calib_stretto, "diffusers": calib_diffusers}
        jobs: list[tuple[str, str, object]] = []
        if bench.unet is not None:
            jobs += [("stretto", spec, spec) for spec in unet_settings(steps)]
        elif "stretto" in engines:
            jobs += [("stretto", spec, spec) for spec in stretto_settings(calib_stretto, sampler, steps)]
        if "diffusers" in engines:
            jobs += [("diffusers", name, params) for name, params in diffusers_settings(calib_diffusers)]
        if "cache-dit" in engines:
            jobs += [("cache-dit", name, params) for name, params in cachedit_caches.settings(steps)]
        jobs = [j for j in jobs if policies is None or policy_name(j[0], j[1]) in policies]
        if setup_i > 0:  # later setups: the middle setting of each policy
            jobs = middle_settings(jobs)
        rows += bench.setup_rows(sampler, steps, jobs)
        result = {
            "benchmark": "cache",
            "model": model,
            "num_images": num_images,
            "guidance": guidance,
            "setups": [{"sampler": s, "steps": n} for s, n in setups[: setup_i + 1]],
            "cfg_modes": CFG_MODES,
            "calibrations": calibrations,
            "machine": describe_machine(device),
            "command": f"stretto bench cache --model {model} --num-images {num_images} --setup "
            + " ".join(f"{s}:{n}" for s, n in setups)
            + (f" --policies {' '.join(policies)}" if policies else "")
            + (f" --engines {' '.join(engines)}" if tuple(engines) != ENGINES else ""),
            "rows": rows,
        }
        if json_path:  # after every setup, so a later setup's failure keeps the finished ones
            write_json(result, json_path)
    if plot_path:
        plot_cache_bench(result, plot_path)
    print_table(rows, TABLE)
    return result


CFG_MODES = {
    "stretto": "both branches in one batched call, state per branch (stretto's pipeline)",
    "cache-dit": "stretto's pipeline (both branches in one batched call) with one cache-dit context: one decision "
    "per call for all rows",
    "separate": "one call per branch, each in its own diffusers cache_context (FirstBlockCache, TaylorSeer, MagCache)",
    "batched": "both branches in one call, unconditional rows first (PAB, FasterCache: one state per module)",
}
FASTERCACHE_NOTE = (
    "FasterCache skips attention only on calls where it dropped the unconditional rows; that approximation "
    "is an FFT over (B, C, H, W) outputs and fails on this transformer's (B, tokens, channels) output, so it "
    "is off here and FasterCache computes everything"
)


class Quality:
    """PSNR / SSIM against the full-compute images, FID and prompt accuracy of a set of images."""

    def __init__(self, reference: torch.Tensor, prompts: list[str], fid: FeatureFID, classifier):
        self.reference, self.prompts, self.fid, self.classifier = reference, prompts, fid, classifier

    def __call__(self, images: torch.Tensor) -> dict:
        same = torch.equal(images, self.reference)
        return {
            "psnr_db": None if same else psnr_db(images, self.reference),
            "ssim": 1.0 if same else ssim(images, self.reference),
            "fid": self.fid.score(images),
            "prompt_acc": prompt_accuracy(self.classifier, images, self.prompts),
        }


def cfg_mode(engine: str, name: str) -> str:
    """How a row runs classifier-free guidance (see CFG_MODES)."""
    if engine in ("stretto", "cache-dit"):
        return engine
    return "batched" if name in diffusers_caches.BATCHED else "separate"


def policy_name(engine: str, name: str) -> str:
    return parse_policy(name).name if engine == "stretto" and name != "none" else name


CALIBRATED = re.compile(r"(ratios|coefficients)=.*/")  # long calibrated tables, kept in the JSON's calibrations


def params_text(engine: str, name: str, params) -> str:
    """Settings as text; calibrated tables are shortened (the JSON's `calibrations` holds them)."""
    if engine == "stretto":
        if name == "none":
            return ""
        return ",".join(p for p in parse_policy(name).describe().split(",") if not CALIBRATED.match(p))
    shown = {k: ("calibrated" if k == "mag_ratios" else v) for k, v in (params or {}).items()}
    return ",".join(f"{k}={v}" for k, v in shown.items())


def middle_settings(jobs: list[tuple[str, str, object]]) -> list[tuple[str, str, object]]:
    """One setting per (engine, policy): the middle of its list."""
    groups: dict[tuple[str, str], list] = {}
    for job in jobs:
        groups.setdefault((job[0], policy_name(job[0], job[1])), []).append(job)
    return [group[len(group) // 2] for group in groups.values()]


def label(row: dict) -> str:
    return f"{row['engine']} {row['policy']}" + (f" {row['params']}" if row["params"] else "")


def psnr_cell(row: dict) -> str:
    """PSNR against full compute, 'ref' for full compute itself."""
    return "ref" if row["psnr_db"] is None else f"{row['psnr_db']:.1f}"


TABLE = [
    ("row", lambda r: label(r)[:58], "<58"), ("setup", lambda r: f"{r['sampler']} {r['steps']}", ">12"),
    ("compute", "compute_fraction", ">7.3f"), ("ideal", lambda r: f"{r['speedup_ideal']:.2f}x", ">6"),
    ("wall", lambda r: f"{r['speedup_wall']:.2f}x", ">6"), ("PSNR", psnr_cell, ">6"), ("FID", "fid", ">6.2f"),
    ("acc", "prompt_acc", ">6.3f"),
]  # fmt: skip


def plot_cache_bench(result: dict, plot_path: str | Path) -> None:
    """Wall-clock speedup vs FID and vs PSNR, one colour per engine, one marker per policy; one row per setup."""
    setups = result["setups"]
    plt, fig, axes = new_figure(len(setups), 2, figsize=(13, 4.8 * len(setups)))
    colours = {"stretto": "tab:blue", "diffusers": "tab:orange", "cache-dit": "tab:green"}
    policies = sorted({r["policy"] for r in result["rows"] if r["policy"] != "none"})
    shapes = ["o", "s", "D", "^", "v", "<", ">", "P", "X", "*", "d", "p", "h", "1", "2", "3", "4", "8", "+", "x"]
    markers = dict(zip(policies, shapes, strict=False))
    for (ax_fid, ax_psnr), setup in zip(axes, setups, strict=True):
        rows = [r for r in result["rows"] if r["sampler"] == setup["sampler"] and r["steps"] == setup["steps"]]
        full = next(r for r in rows if r["engine"] == "stretto" and r["policy"] == "none")
        for r in rows:
            if r["compute_fraction"] >= 1:  # full compute, or a cache that skipped nothing (no point to place)
                continue
            style = dict(color=colours[r["engine"]], marker=markers.get(r["policy"], "o"), s=36, alpha=0.85)
            ax_fid.scatter(r["speedup_wall"], r["fid"], **style)
            ax_psnr.scatter(r["speedup_wall"], r["psnr_db"], **style)
        ax_fid.axhline(full["fid"], color="k", ls="--", lw=1)
        ax_fid.axhline(full["fid"] * 1.05, color="gray", ls=":", lw=1)
        ax_fid.text(1.0, full["fid"] * 1.05, " full compute +5%", fontsize=8, va="bottom", color="gray")
        for ax, what in ((ax_fid, "FID (lower is better)"), (ax_psnr, "PSNR vs full compute, dB (higher is better)")):
            ax.set_xlabel("wall-clock speedup over full compute (same run)")
            ax.set_ylabel(what)
            ax.set_title(f"{result['model']}, {setup['sampler']} {setup['steps']} steps", fontsize=10)
            ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=c, marker="o", ls="", label=e) for e, c in colours.items()]
    handles += [plt.Line2D([], [], color="gray", marker=m, ls="", label=p) for p, m in markers.items()]
    axes[0][1].legend(handles=handles, fontsize=8, ncol=2)
    fig.suptitle(f"feature caches on {result['model']} ({result['num_images']} prompts, guidance {result['guidance']})")
    save_figure(fig, plot_path, dpi=110)


def run_wall_check(
    specs: list[str],
    json_path: str | Path | None = None,
    model: str = "shapes-flux",
    device: str | torch.device = "cpu",
    num_images: int = 64,
    sampler: str = "euler",
    steps: int = 50,
    repeats: int = 3,
    guidance: float = DEFAULT_GUIDANCE,
    plot_path: str | Path | None = None,
) -> dict:
    """Wall-clock speedup of a few policies, each run interleaved with full compute (full, cached, full, ...).

    The main benchmark times every row once against full-compute runs at its start and end, so slow drift of a
    shared machine lands in its ratios; here each cached run sits between two full runs, and the speedup is
    the median over repeats of (mean of the neighbouring full runs) / (cached run).

    Two ideals per row: `speedup_ideal` = 1 / compute fraction, as if the whole step shrank with the stack's
    work, and `speedup_ideal_amdahl`, which keeps the work outside the block stack that every step does
    whatever the policy (its share measured on the full runs by `StackTimer`: `stack_share`). Wall over the
    Amdahl ideal is the cost of the policy's own mechanism.
    """
    bench = CacheBench(model, device, num_images, guidance)
    bench.run("stretto", "none", None, sampler, steps)  # warm-up
    rows = []

    def full_run() -> Run:
        return bench.run("stretto", "none", None, sampler, steps, time_stack=True)

    for spec in tqdm(specs, desc="wall check"):
        full = [full_run()]
        ratios, cached = [], []
        for _ in range(repeats):
            cached.append(bench.run("stretto", spec, spec, sampler, steps))
            full.append(full_run())
            ratios.append((full[-2].wall_s + full[-1].wall_s) / 2 / cached[-1].wall_s)
        fraction = cached[0].work / full[0].work
        shares = sorted(r.stack_s / r.wall_s for r in full)
        share = shares[len(shares) // 2]
        wall = sorted(ratios)[len(ratios) // 2]
        amdahl = 1 / (1 - share + share * fraction)
        rows.append({
            "policy": policy_name("stretto", spec), "params": params_text("stretto", spec, spec),
            "compute_fraction": fraction, "speedup_ideal": 1 / fraction, "stack_share": share,
            "speedup_ideal_amdahl": amdahl, "speedup_wall": wall, "speedup_wall_runs": ratios,
            "of_ideal": wall * fraction, "of_ideal_amdahl": wall / amdahl,
            "full_wall_s": [r.wall_s for r in full], "full_stack_s": [r.stack_s for r in full],
            "cached_wall_s": [r.wall_s for r in cached],
        })  # fmt: skip
    result = {
        "benchmark": "cache-wall-check", "model": model, "num_images": num_images, "sampler": sampler,
        "steps": steps, "repeats": repeats, "machine": describe_machine(device),
        "command": f"stretto bench cache --model {model} --wall-check {' '.join(specs)} --num-images {num_images} "
                   f"--repeats {repeats}", "rows": rows,
    }  # fmt: skip
    if json_path:
        write_json(result, json_path)
    if plot_path:
        plot_wall_check(result, plot_path)
    for r in rows:
        print(f"{r['params']:<50} wall {r['speedup_wall']:.2f}x: {r['of_ideal']:.2f} of ideal "
              f"{r['speedup_ideal']:.2f}x, {r['of_ideal_amdahl']:.2f} of {r['speedup_ideal_amdahl']:.2f}x with "
              f"the {1 - r['stack_share']:.1%} outside the stack")  # fmt: skip
    return result


def plot_wall_check(result: dict, plot_path: str | Path) -> None:
    """Per setting, wall speedup over each ideal (1 / fraction, and Amdahl's with the work outside the stack)."""
    rows = result["rows"]
    plt, fig, axes = new_figure(figsize=(9, 0.35 * len(rows) + 1.8))
    ax = axes[0][0]
    labels = [r["params"] if len(r["params"]) < 48 else r["params"][:45] + "..." for r in rows]
    y = range(len(rows))
    ax.barh([i + 0.2 for i in y], [r["of_ideal"] for r in rows], 0.4, label="wall / (1 / compute fraction)")
    ax.barh([i - 0.2 for i in y], [r["of_ideal_amdahl"] for r in rows], 0.4,
            label="wall / Amdahl ideal (work outside the stack counted)")  # fmt: skip
    ax.axvline(0.9, color="k", ls="--", lw=1, label="0.9")
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0.5, 1.05)
    ax.set_xlabel("share of the ideal speedup reached (interleaved wall time)")
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3)
    fig.suptitle(f"cache mechanism cost on {result['model']}, {result['sampler']} {result['steps']} steps, "
                 f"{result['num_images']} images, {result['repeats']} repeats", fontsize=9)  # fmt: skip
    save_figure(fig, plot_path)
