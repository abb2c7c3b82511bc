"""`stretto calibrate cache teacache|magcache` and `stretto search cache`: tuning an acceleration for a model.

Each runs full-compute (calibrate) or cached (search) generations of the chosen model on deterministic prompts,
writes the numbers as JSON and a plot (to stretto-results/ unless given paths), and prints the ready-to-use
`--cache` string.
"""

from __future__ import annotations

import argparse
import math

from stretto.cli import args as shared
from stretto.tune.calibrate import MAX_DEGREE

CALIBRATE_DEFAULTS = {"steps": 50, "sampler": "euler", "guidance": 3.0, "num_prompts": 8}
SEARCH_DEFAULTS = {"num_prompts": 4, "population": 24, "generations": 12}
CALIBRATION_PROMPT_SEED = 4321  # evaluation_prompts' default seed (1234) is the benchmarks' prompt set


def _setup(args: argparse.Namespace, prompt_seed: int | None = None):
    """Check the shared flags; the model and the prompts."""
    import stretto
    from stretto.data.shapes import evaluation_prompts
    from stretto.models.shapes_flux import ShapesFlux
    from stretto.pipelines.image import check_settings

    if args.num_prompts < 1:
        raise ValueError(f"--num-prompts must be >= 1, got {args.num_prompts}")
    check_settings(args.steps, args.sampler, args.guidance, 1.0)
    model = stretto.load(args.model, device=args.device, kind=ShapesFlux.kind)
    if prompt_seed is None:
        return model, evaluation_prompts(args.num_prompts)
    return model, evaluation_prompts(args.num_prompts, seed=prompt_seed)


def _calibration_setup(args: argparse.Namespace):
    if args.steps < 2:
        raise ValueError(f"--steps must be >= 2 (calibration measures changes between steps), got {args.steps}")
    model, prompts = _setup(args)
    settings = {"steps": args.steps, "sampler": args.sampler, "guidance": args.guidance, "seeds": 0}
    return model, prompts, settings


def _written(args: argparse.Namespace) -> str:
    return f"wrote {args.json}" + (f" and {args.plot}" if args.plot else "")


def cmd_calibrate_teacache(args: argparse.Namespace) -> None:
    from stretto.bench.report import describe_machine, write_json
    from stretto.cache.teacache import TeaCache
    from stretto.cli.tune_plots import plot_teacache_fit
    from stretto.tune.calibrate import calibrate_teacache

    if not 1 <= args.degree <= MAX_DEGREE:
        raise ValueError(f"--degree must be in [1, {MAX_DEGREE}], got {args.degree}")
    model, prompts, settings = _calibration_setup(args)
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
    write_json(result, args.json)
    if args.plot:
        plot_teacache_fit(fit, args.plot, f"{args.model}, {args.sampler} {args.steps} steps")
    print(f"fitted {len(fit.x)} pairs, R^2 {fit.r2:.4f}; {_written(args)}")
    print(f'--cache "{fit.spec()}"')
    print(f"(add threshold=T to the string, default {TeaCache().threshold:g}: a higher threshold skips more steps)")


def cmd_calibrate_magcache(args: argparse.Namespace) -> None:
    from stretto.bench.report import describe_machine, write_json
    from stretto.cli.tune_plots import plot_magcache_ratios
    from stretto.tune.calibrate import calibrate_magcache

    model, prompts, settings = _calibration_setup(args)
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
    write_json(result, args.json)
    if args.plot:
        plot_magcache_ratios(fit.ratios, args.plot, f"{args.model}, {args.sampler} {args.steps} steps")
    print(_written(args))
    print(f'--cache "{fit.spec()}"')


def cmd_search_cache(args: argparse.Namespace) -> None:
    from stretto.bench.report import describe_machine, write_json
    from stretto.cache.schedule import pick
    from stretto.cli.tune_plots import plot_search
    from stretto.tune.search import search_schedules

    if args.population < 4:
        raise ValueError(f"--population must be >= 4, got {args.population}")
    if args.generations < 0:
        raise ValueError(f"--generations must be >= 0, got {args.generations}")
    if args.budget_psnr is not None and not args.budget_psnr > 0:
        raise ValueError(f"--budget-psnr must be > 0 dB, got {args.budget_psnr}")
    model, prompts = _setup(args, prompt_seed=CALIBRATION_PROMPT_SEED)
    seeds = [args.seed + i for i in range(len(prompts))]
    result = search_schedules(
        model, prompts, args.steps, args.sampler, args.guidance, seeds, args.population, args.generations,
        seed=args.seed,
    )  # fmt: skip
    out = {
        "method": "ecad-nsga2",
        "machine": describe_machine(args.device),
        "model": args.model,
        "sampler": args.sampler,
        "steps": args.steps,
        "guidance": args.guidance,
        "num_prompts": args.num_prompts,
        "prompts": prompts,
        "seeds": seeds,
        "population": args.population,
        "generations": args.generations,
        "search_seed": args.seed,
        "model_runs": result.model_runs,
        "wall_s": round(result.seconds, 1),
        "blocks": len(model.blocks),
        "objectives": "minimise compute fraction and 1/PSNR (dB, vs the full-compute images of the same prompts)",
        "reference": {"compute_fraction": 1.0, "psnr_db": None, "note": "full compute; PSNR null means identical"},
        "front": [c.as_dict() for c in result.front],
        "evaluated": [c.as_dict(with_mask=False) for c in result.evaluated],
        "command": (
            f"stretto search cache --model {args.model} --steps {args.steps} --sampler {args.sampler} "
            f"--guidance {args.guidance} --num-prompts {args.num_prompts} --population {args.population} "
            f"--generations {args.generations} --seed {args.seed}"
        ),
    }
    write_json(out, args.json)
    if args.plot:
        plot_search(out, args.plot)
    print(
        f"evaluated {result.model_runs} schedules in {result.seconds:.0f} s; front of {len(result.front)}; "
        + _written(args)
    )
    print(f"{'compute':>8} {'speedup':>8} {'PSNR dB':>8}  origin")
    for c in result.front:
        psnr = "ref" if math.isinf(c.psnr_db) else f"{c.psnr_db:.2f}"
        print(f"{c.compute_fraction:>8.3f} {c.speedup_ideal:>7.2f}x {psnr:>8}  {c.origin}")
    if args.budget_psnr is not None:
        best = pick(result.front, args.budget_psnr)
        print(
            f"cheapest with PSNR >= {args.budget_psnr:g} dB: compute {best.compute_fraction:.3f} "
            f"({best.speedup_ideal:.2f}x ideal), PSNR {best.psnr_db:.2f} dB"
        )
        print(f"--cache {best.spec}")
        print(f"or: --cache schedule:file={args.json},min_psnr={args.budget_psnr:g}")


def _add_tuning_args(p: argparse.ArgumentParser, name: str, num_prompts: int, prompts: str, min_steps: int) -> None:
    """The flags calibration and search share: model, device, sampling settings, prompts, outputs."""
    shared.add_model(p)
    shared.add_device(p)
    d = CALIBRATE_DEFAULTS
    shared.add_image_sampling(p, steps=d["steps"], sampler=d["sampler"], guidance=d["guidance"], min_steps=min_steps)
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
    _add_tuning_args(p, "calibrate-teacache", CALIBRATE_DEFAULTS["num_prompts"], "deterministic evaluation prompts", 2)
    p.add_argument("--degree", type=int, default=4, help=f"polynomial degree in [1, {MAX_DEGREE}] (default 4)")
    p.set_defaults(func=cmd_calibrate_teacache)
    p = methods.add_parser("magcache", help="measure MagCache's residual magnitude ratio per step")
    _add_tuning_args(p, "calibrate-magcache", CALIBRATE_DEFAULTS["num_prompts"], "deterministic evaluation prompts", 2)
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
    d = SEARCH_DEFAULTS
    _add_tuning_args(p, "cache-search", d["num_prompts"], "deterministic calibration prompts", 1)
    p.add_argument("--population", type=int, default=d["population"], help="masks per generation (>= 4)")
    p.add_argument("--generations", type=int, default=d["generations"], help="rounds of offspring (>= 0)")
    shared.add_seed(p, "search seed and first noise seed")
    p.add_argument(
        "--budget-psnr", type=float, default=None, help="print the cheapest front schedule with at least this PSNR"
    )
    p.set_defaults(func=cmd_search_cache)
    return search
