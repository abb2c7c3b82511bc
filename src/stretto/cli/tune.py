"""`stretto calibrate cache teacache|magcache` and `stretto search cache`: tuning an acceleration for a model.

Each runs full-compute (calibrate) or cached (search) generations of the chosen model on deterministic prompts
(stretto.tune), writes the numbers as JSON and a plot (to stretto-results/ unless given paths), and prints the
ready-to-use `--cache` string.
"""

from __future__ import annotations

import argparse
import math

from stretto.cli import args as shared
from stretto.tune.calibrate import CALIBRATION_PROMPTS, DEFAULT_DEGREE, MAX_DEGREE
from stretto.tune.inputs import TUNING_GUIDANCE, TUNING_SAMPLER, TUNING_STEPS
from stretto.tune.search import DEFAULT_GENERATIONS, DEFAULT_POPULATION, MIN_POPULATION, SEARCH_PROMPTS


def _check_num_prompts(args: argparse.Namespace) -> None:
    # The run functions check the same settings under their Python names; here the error names the flag typed.
    if args.num_prompts < 1:
        raise ValueError(f"--num-prompts must be >= 1, got {args.num_prompts}")


def _check_calibration_flags(args: argparse.Namespace) -> None:
    _check_num_prompts(args)
    if args.steps < 2:
        raise ValueError(f"--steps must be >= 2 (calibration measures changes between steps), got {args.steps}")


def _written(args: argparse.Namespace) -> str:
    return f"wrote {args.json}" + (f" and {args.plot}" if args.plot else "")


def _sampling(args: argparse.Namespace) -> dict:
    return {"model": args.model, "device": args.device, "steps": args.steps, "sampler": args.sampler,
            "guidance": args.guidance, "num_prompts": args.num_prompts}  # fmt: skip


def cmd_calibrate_teacache(args: argparse.Namespace) -> None:
    from stretto.cache.teacache import TeaCache
    from stretto.tune.calibrate import run_teacache_calibration

    if not 1 <= args.degree <= MAX_DEGREE:
        raise ValueError(f"--degree must be in [1, {MAX_DEGREE}], got {args.degree}")
    _check_calibration_flags(args)
    result = run_teacache_calibration(args.json, args.plot, degree=args.degree, **_sampling(args))
    print(f"fitted {len(result['pairs']['x'])} pairs, R^2 {result['r2']:.4f}; {_written(args)}")
    print(f'--cache "{result["spec"]}"')
    print(f"(add threshold=T to the string, default {TeaCache().threshold:g}: a higher threshold skips more steps)")


def cmd_calibrate_magcache(args: argparse.Namespace) -> None:
    from stretto.tune.calibrate import run_magcache_calibration

    _check_calibration_flags(args)
    result = run_magcache_calibration(args.json, args.plot, **_sampling(args))
    print(_written(args))
    print(f'--cache "{result["spec"]}"')


def cmd_search_cache(args: argparse.Namespace) -> None:
    from stretto.cache.schedule import Schedule, pick
    from stretto.tune.search import run_schedule_search

    if args.population < MIN_POPULATION:
        raise ValueError(f"--population must be >= {MIN_POPULATION}, got {args.population}")
    if args.generations < 0:
        raise ValueError(f"--generations must be >= 0, got {args.generations}")
    if args.budget_psnr is not None and not args.budget_psnr > 0:
        raise ValueError(f"--budget-psnr must be > 0 dB, got {args.budget_psnr}")
    _check_num_prompts(args)
    result = run_schedule_search(
        args.json, args.plot, population=args.population, generations=args.generations, seed=args.seed,
        **_sampling(args),
    )  # fmt: skip
    front = result["front"]
    print(f"evaluated {result['model_runs']} schedules in {result['wall_s']:.0f} s; front of {len(front)}; "
          + _written(args))  # fmt: skip
    print(f"{'compute':>8} {'speedup':>8} {'PSNR dB':>8}  origin")
    for row in front:
        psnr = "ref" if row["psnr_db"] is None else f"{row['psnr_db']:.2f}"
        print(f"{row['compute_fraction']:>8.3f} {row['speedup_ideal']:>7.2f}x {psnr:>8}  {row['origin']}")
    if args.budget_psnr is not None:
        best = pick(front, args.budget_psnr)
        best_psnr = math.inf if best["psnr_db"] is None else best["psnr_db"]  # null: the full-compute image itself
        print(
            f"cheapest with PSNR >= {args.budget_psnr:g} dB: compute {best['compute_fraction']:.3f} "
            f"({best['speedup_ideal']:.2f}x ideal), PSNR {best_psnr:.2f} dB"
        )
        print(f"--cache {Schedule(pattern=best['mask']).describe()}")
        print(f"or: --cache schedule:file={args.json},min_psnr={args.budget_psnr:g}")


def _add_tuning_args(p: argparse.ArgumentParser, name: str, num_prompts: int, prompts: str, min_steps: int) -> None:
    """The flags calibration and search share: model, device, sampling settings, prompts, outputs."""
    shared.add_model(p)
    shared.add_device(p)
    shared.add_image_sampling(p, steps=TUNING_STEPS, sampler=TUNING_SAMPLER, guidance=TUNING_GUIDANCE,
                              min_steps=min_steps)  # fmt: skip
    p.add_argument("--num-prompts", type=int, default=num_prompts, help=f"{prompts} (default {num_prompts})")
    shared.add_results(p, name)


def add_calibrate_commands(subparsers) -> argparse.ArgumentParser:
    """`stretto calibrate cache teacache|magcache`."""
    calibrate = subparsers.add_parser("calibrate", help="calibrate an acceleration method for a model")
    what = calibrate.add_subparsers(dest="what", required=True)
    methods = what.add_parser("cache", help="fit a feature cache's per-model constants").add_subparsers(
        dest="method", required=True
    )
    p = methods.add_parser("teacache", help="fit TeaCache's rescaling polynomial (input change -> output change)")
    _add_tuning_args(p, "calibrate-teacache", CALIBRATION_PROMPTS, "deterministic evaluation prompts", 2)
    p.add_argument("--degree", type=int, default=DEFAULT_DEGREE,
                   help=f"polynomial degree in [1, {MAX_DEGREE}] (default {DEFAULT_DEGREE})")  # fmt: skip
    p.set_defaults(func=cmd_calibrate_teacache)
    p = methods.add_parser("magcache", help="measure MagCache's residual magnitude ratio per step")
    _add_tuning_args(p, "calibrate-magcache", CALIBRATION_PROMPTS, "deterministic evaluation prompts", 2)
    p.set_defaults(func=cmd_calibrate_magcache)
    return calibrate


def add_search_commands(subparsers) -> argparse.ArgumentParser:
    """`stretto search cache`."""
    search = subparsers.add_parser("search", help="search an acceleration's settings for a model")
    what = search.add_subparsers(dest="what", required=True)
    p = what.add_parser(
        "cache",
        help="ECAD-style NSGA-II search for explicit cache schedules (steps x blocks): compute vs PSNR front",
    )
    _add_tuning_args(p, "cache-search", SEARCH_PROMPTS, "deterministic calibration prompts", 1)
    p.add_argument("--population", type=int, default=DEFAULT_POPULATION,
                   help=f"masks per generation (>= {MIN_POPULATION})")  # fmt: skip
    p.add_argument("--generations", type=int, default=DEFAULT_GENERATIONS, help="rounds of offspring (>= 0)")
    shared.add_seed(p, "search seed and first noise seed")
    p.add_argument(
        "--budget-psnr", type=float, default=None, help="print the cheapest front schedule with at least this PSNR"
    )
    p.set_defaults(func=cmd_search_cache)
    return search
