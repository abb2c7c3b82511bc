"""The calibration commands of the CLI: `stretto calibrate cache teacache|magcache`.

cli.py calls `add_calibrate_commands(subparsers)`; each handler takes the argparse namespace and raises
ValueError on bad input (cli.py prints it as an error). Each command runs full-compute generations of the
chosen model on deterministic prompts, writes the recorded numbers as JSON and a plot, and prints the
ready-to-use `--cache` string.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from stretto.tune.calibrate import MAX_DEGREE

DEFAULTS = {"steps": 50, "sampler": "euler", "guidance": 3.0, "num_prompts": 8}


def _setup(args: argparse.Namespace):
    """Check the shared flags; the model, the prompts and the generation settings."""
    import stretto
    from stretto.data.shapes import evaluation_prompts
    from stretto.pipelines.image import check_settings

    if args.num_prompts < 1:
        raise ValueError(f"--num-prompts must be >= 1, got {args.num_prompts}")
    if args.steps < 2:
        raise ValueError(f"--steps must be >= 2 (calibration measures changes between steps), got {args.steps}")
    check_settings(args.steps, args.sampler, args.guidance, 1.0)
    model = stretto.load(args.model, device=args.device, kind="shapes-flux")
    prompts = evaluation_prompts(args.num_prompts)
    settings = {"steps": args.steps, "sampler": args.sampler, "guidance": args.guidance, "seeds": 0}
    return model, prompts, settings


def _write_json(path: str, result: dict) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def cmd_calibrate_teacache(args: argparse.Namespace) -> None:
    import numpy as np

    from stretto.bench.report import describe_machine
    from stretto.cache.teacache import TeaCache
    from stretto.tune.calibrate import calibrate_teacache

    if not 1 <= args.degree <= MAX_DEGREE:
        raise ValueError(f"--degree must be in [1, {MAX_DEGREE}], got {args.degree}")
    model, prompts, settings = _setup(args)
    fit = calibrate_teacache(model, prompts, degree=args.degree, **settings)
    result = {
        "method": "teacache",
        "model": args.model,
        "machine": describe_machine(args.device),
        "settings": settings,
        "prompts": prompts,
        "degree": args.degree,
        "coefficients": fit.coefficients,
        "r2": fit.r2,
        "spec": fit.spec(),
        "pairs": {"index": fit.index, "x": fit.x, "y": fit.y},
    }
    _write_json(args.json, result)
    if args.plot:
        plt = _figure()
        fig, ax = plt.subplots(figsize=(6, 4.5))
        points = ax.scatter(fit.x, fit.y, c=fit.index, s=8, cmap="viridis", alpha=0.7)
        fig.colorbar(points, ax=ax, label="step index")
        grid = np.linspace(min(fit.x), max(fit.x), 200)
        ax.plot(grid, np.polyval(fit.coefficients, grid), "r-", lw=1.5, label=f"degree {args.degree}, R² {fit.r2:.3f}")
        ax.set_xlabel("relative L1 change of block 0's modulated input")
        ax.set_ylabel("relative L1 change of the stack output residual")
        ax.set_title(f"TeaCache calibration: {args.model}, {args.sampler} {args.steps} steps", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=120)
        plt.close(fig)
    print(
        f"fitted {len(fit.x)} pairs, R^2 {fit.r2:.4f}; wrote {args.json}" + (f" and {args.plot}" if args.plot else "")
    )
    print(f'--cache "{fit.spec()}"')
    print(f"(add threshold=T to the string, default {TeaCache().threshold:g}: a higher threshold skips more steps)")


def cmd_calibrate_magcache(args: argparse.Namespace) -> None:
    from stretto.bench.report import describe_machine
    from stretto.tune.calibrate import calibrate_magcache

    model, prompts, settings = _setup(args)
    fit = calibrate_magcache(model, prompts, **settings)
    result = {
        "method": "magcache",
        "model": args.model,
        "machine": describe_machine(args.device),
        "settings": settings,
        "prompts": prompts,
        "ratios": fit.ratios,
        "spec": fit.spec(),
    }
    _write_json(args.json, result)
    if args.plot:
        plt = _figure()
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(range(len(fit.ratios)), fit.ratios, "o-", ms=3)
        ax.axhline(1.0, color="gray", ls=":", lw=1)
        ax.set_xlabel("step index")
        ax.set_ylabel("residual magnitude ratio to the previous step")
        ax.set_title(f"MagCache calibration: {args.model}, {args.sampler} {args.steps} steps", fontsize=10)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=120)
        plt.close(fig)
    print(f"wrote {args.json}" + (f" and {args.plot}" if args.plot else ""))
    print(f'--cache "{fit.spec()}"')


def _add_common(p: argparse.ArgumentParser, method: str) -> None:
    p.add_argument("--model", default="shapes-flux", help="shipped model name or checkpoint folder")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default: cpu)")
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"], help="sampler steps, >= 2 (default 50)")
    p.add_argument("--sampler", default=DEFAULTS["sampler"], help="sampler (default euler)")
    p.add_argument("--guidance", type=float, default=DEFAULTS["guidance"], help="CFG scale (default 3.0)")
    p.add_argument(
        "--num-prompts", type=int, default=DEFAULTS["num_prompts"], help="deterministic evaluation prompts (default 8)"
    )
    p.add_argument("--json", default=f"benchmarks/results/calibrate-{method}.json")
    p.add_argument("--plot", default=f"benchmarks/results/calibrate-{method}.png", help="PNG path ('' for none)")


def add_calibrate_commands(subparsers) -> argparse.ArgumentParser:
    """`stretto calibrate cache teacache|magcache`."""
    calibrate = subparsers.add_parser("calibrate", help="calibrate an acceleration method for a model")
    what = calibrate.add_subparsers(dest="what", required=True)
    methods = what.add_parser("cache", help="fit a feature cache's per-model constants").add_subparsers(
        dest="method", required=True
    )
    p = methods.add_parser("teacache", help="fit TeaCache's rescaling polynomial (input change -> output change)")
    _add_common(p, "teacache")
    p.add_argument("--degree", type=int, default=4, help=f"polynomial degree in [1, {MAX_DEGREE}] (default 4)")
    p.set_defaults(func=cmd_calibrate_teacache)
    p = methods.add_parser("magcache", help="measure MagCache's residual magnitude ratio per step")
    _add_common(p, "magcache")
    p.set_defaults(func=cmd_calibrate_magcache)
    return calibrate
