"""The search commands of the CLI: `stretto search cache` (an ECAD-style NSGA-II search for cache schedules).

cli.py calls `add_search_commands(subparsers)`; the handler takes the argparse namespace and raises
ValueError on bad input (cli.py prints it as an error). The search runs on deterministic calibration
prompts (drawn with their own seed, apart from the benchmarks' evaluation prompts), writes the front and
every evaluated point as JSON and a plot, and with `--budget-psnr` prints the pick as a `--cache` string.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

DEFAULTS = {"steps": 50, "sampler": "euler", "guidance": 3.0, "num_prompts": 4, "population": 24, "generations": 12}
CALIBRATION_PROMPT_SEED = 4321  # evaluation_prompts' default seed (1234) is the benchmarks' prompt set


def cmd_search_cache(args: argparse.Namespace) -> None:
    import stretto
    from stretto.bench.report import describe_machine
    from stretto.cache.schedule import pick
    from stretto.data.shapes import evaluation_prompts
    from stretto.pipelines.image import check_settings
    from stretto.tune.search import search_schedules

    if args.num_prompts < 1:
        raise ValueError(f"--num-prompts must be >= 1, got {args.num_prompts}")
    if args.population < 4:
        raise ValueError(f"--population must be >= 4, got {args.population}")
    if args.generations < 0:
        raise ValueError(f"--generations must be >= 0, got {args.generations}")
    if args.budget_psnr is not None and not args.budget_psnr > 0:
        raise ValueError(f"--budget-psnr must be > 0 dB, got {args.budget_psnr}")
    check_settings(args.steps, args.sampler, args.guidance, 1.0)
    model = stretto.load(args.model, device=args.device, kind="shapes-flux")
    prompts = evaluation_prompts(args.num_prompts, seed=CALIBRATION_PROMPT_SEED)
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
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    if args.plot:
        plot_search(out, args.plot)
    print(
        f"evaluated {result.model_runs} schedules in {result.seconds:.0f} s; front of {len(result.front)}; "
        f"wrote {args.json}" + (f" and {args.plot}" if args.plot else "")
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


# (origin prefix, marker, colour, legend) of the search's seed masks (see stretto.tune.search.seed_masks)
SEED_FAMILIES = (
    ("fora", "^", "tab:orange", "seed: FORA-like, full step every N"),
    ("first+last", "s", "tab:green", "seed: first+last block always, middle every N"),
    ("delta", "D", "tab:purple", "seed: Delta-DiT-like, interval N"),
)


def plot_search(result: dict, plot_path: str | Path) -> None:
    """PSNR vs ideal speedup: every evaluated schedule faint, seed masks marked, the front as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = [r for r in result["evaluated"] if r["psnr_db"] is not None]
    front = [r for r in result["front"] if r["psnr_db"] is not None]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    ax.scatter(
        [r["speedup_ideal"] for r in finite], [r["psnr_db"] for r in finite],
        s=12, color="0.6", alpha=0.35, label=f"evaluated ({len(result['evaluated'])})",
    )  # fmt: skip
    for prefix, marker, color, family in SEED_FAMILIES:  # the hand-made starting masks, N next to each
        mine = [r for r in finite if r["origin"].startswith(prefix)]
        if not mine:
            continue
        ax.scatter([r["speedup_ideal"] for r in mine], [r["psnr_db"] for r in mine], s=34, marker=marker,
                   color=color, zorder=5, label=family)  # fmt: skip
        for r in mine:
            n = r["origin"].rstrip().split()[-1].split("=")[-1]
            ax.annotate(n, (r["speedup_ideal"], r["psnr_db"]), fontsize=7, xytext=(0, -11), ha="center",
                        textcoords="offset points", color=color)  # fmt: skip
    ax.plot(
        [r["speedup_ideal"] for r in front], [r["psnr_db"] for r in front],
        "o-", color="tab:blue", ms=5, lw=1.5, zorder=4, label=f"Pareto front ({len(result['front'])}, incl. full)",
    )  # fmt: skip
    ax.set_xlabel("ideal speedup (1 / compute fraction of block evaluations)")
    ax.set_ylabel("PSNR vs full compute (dB), higher is better")
    ax.set_title(
        f"cache schedule search (NSGA-II) on {result['model']}: {result['sampler']} {result['steps']} steps, "
        f"{result['num_prompts']} prompts\npopulation {result['population']}, {result['generations']} generations, "
        f"{result['model_runs']} runs; full compute = 1x, identical",
        fontsize=9,
    )
    ax.margins(x=0.1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    Path(plot_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(plot_path, dpi=120)
    plt.close(fig)


def add_search_commands(subparsers) -> argparse.ArgumentParser:
    """`stretto search cache`."""
    search = subparsers.add_parser("search", help="search an acceleration's settings for a model")
    what = search.add_subparsers(dest="what", required=True)
    p = what.add_parser(
        "cache",
        help="ECAD-style NSGA-II search for explicit cache schedules (steps x blocks): compute vs PSNR front",
    )
    p.add_argument("--model", default="shapes-flux", help="shipped model name or checkpoint folder")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default: cpu)")
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"], help="sampler steps (default 50)")
    p.add_argument("--sampler", default=DEFAULTS["sampler"], help="sampler (default euler)")
    p.add_argument("--guidance", type=float, default=DEFAULTS["guidance"], help="CFG scale (default 3.0)")
    p.add_argument(
        "--num-prompts", type=int, default=DEFAULTS["num_prompts"], help="deterministic calibration prompts (default 4)"
    )
    p.add_argument("--population", type=int, default=DEFAULTS["population"], help="masks per generation (>= 4)")
    p.add_argument("--generations", type=int, default=DEFAULTS["generations"], help="rounds of offspring (>= 0)")
    p.add_argument("--seed", type=int, default=0, help="search seed and first noise seed (default 0)")
    p.add_argument("--json", default="benchmarks/results/cache-search.json")
    p.add_argument("--plot", default="benchmarks/results/cache-search.png", help="PNG path ('' for none)")
    p.add_argument(
        "--budget-psnr", type=float, default=None, help="print the cheapest front schedule with at least this PSNR"
    )
    p.set_defaults(func=cmd_search_cache)
    return search
