"""The `stretto` command: generate, demo, train, bench. A thin layer over the Python API.

Bad input ends with a one-line `stretto: error: ...` and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from stretto.pipelines.image import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_SHIFT, DEFAULT_STEPS, MAX_GUIDANCE


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="shapes-flux", help="shipped model name or checkpoint folder")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default: cpu)")


def _add_sampling_args(p: argparse.ArgumentParser, steps: int = DEFAULT_STEPS) -> None:
    from stretto.sampling import SAMPLERS

    p.add_argument("--steps", type=int, default=steps, help=f"sampler steps, >= 1 (default {steps})")
    p.add_argument("--sampler", default=DEFAULT_SAMPLER, help=f"one of {', '.join(SAMPLERS)}")
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE, help=f"CFG scale in [0, {MAX_GUIDANCE:g}]")
    p.add_argument("--shift", type=float, default=DEFAULT_SHIFT, help="SD3/Flux timestep shift (1 = none)")
    p.add_argument("--time-shift", action="store_true", help="Time-Shift Sampler: variance-matched network sigma")
    p.add_argument(
        "--cache",
        default=None,
        help='feature cache, e.g. "taylor", "fora:interval=3", "dbcache:first=1,threshold=0.1" '
        "(stretto.cache.available() lists all policies and parameters)",
    )


def cmd_generate(args: argparse.Namespace) -> None:
    import stretto
    from stretto.images import save_images

    if args.num_seeds < 1:
        raise ValueError(f"--num-seeds must be >= 1, got {args.num_seeds}")
    model = stretto.load(args.model, device=args.device)
    seeds = list(range(args.seed, args.seed + args.num_seeds))
    prompts = [p for p in args.prompts for _ in seeds]
    result = stretto.generate(
        model,
        prompts,
        steps=args.steps,
        sampler=args.sampler,
        guidance=args.guidance,
        shift=args.shift,
        seeds=seeds * len(args.prompts),
        time_shift=args.time_shift,
        cache=args.cache,
    )
    labels = list(args.prompts) if len(prompts) > 1 else None
    cols = [f"seed {s}" for s in seeds] if len(prompts) > 1 else None
    path = save_images(result.images, args.out, rows=len(args.prompts), row_labels=labels, col_labels=cols)
    s = result.stats
    print(
        f"wrote {path} ({len(prompts)} image(s)); {args.sampler} {args.steps} steps: {s.model_calls} model calls, "
        f"{s.total_block_evals} block evaluations, {s.wall_s:.2f} s"
    )
    if s.cache is not None:
        t = s.cache.totals()
        print(f"cache {s.cache.policy}: {t['computed']:g} computed, {t['reused']:g} reused, {t['forecast']:g} forecast")


def cmd_demo(args: argparse.Namespace) -> None:
    from stretto.demo import run_demo

    run_demo(model=args.model, device=args.device, out=args.out)


def cmd_train_image(args: argparse.Namespace) -> None:
    from stretto.train.image import ImageTrainConfig, train_image

    cfg = ImageTrainConfig(out=args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    print(f"exported {train_image(cfg)}")


def cmd_train_classifier(args: argparse.Namespace) -> None:
    from stretto import checkpoints
    from stretto.train.classifier import heldout_accuracy, train_classifier

    folder = train_classifier(args.out, steps=args.steps, batch_size=args.batch_size, seed=args.seed)
    print(f"exported {folder}")
    model = checkpoints.load(folder, kind="shapes-classifier")
    for noise in (0.0, 0.05, 0.1):
        print(f"held-out exact-scene accuracy, noise {noise}: {heldout_accuracy(model, noise=noise):.4f}")


def cmd_bench_samplers(args: argparse.Namespace) -> None:
    from stretto.bench.samplers import run_sampler_bench

    run_sampler_bench(
        json_path=args.json,
        plot_path=args.plot,
        model=args.model,
        device=args.device,
        num_images=args.num_images,
        guidance=args.guidance,
        shift=args.shift,
        nfes=args.nfe,
    )


def cmd_bench_cache(args: argparse.Namespace) -> None:
    from stretto.bench.cache import run_cache_bench, run_wall_check

    if args.wall_check:
        run_wall_check(args.wall_check, model=args.model, device=args.device, num_images=args.num_images)
        return
    setups = []
    for item in args.setup:
        sampler, _, steps = item.partition(":")
        if not steps.isdigit() or int(steps) < 1:
            raise ValueError(f"--setup must look like SAMPLER:STEPS, e.g. euler:50, got {item!r}")
        setups.append((sampler, int(steps)))
    run_cache_bench(
        json_path=args.json,
        plot_path=args.plot,
        model=args.model,
        device=args.device,
        num_images=args.num_images,
        guidance=args.guidance,
        setups=tuple(setups),
        policies=args.policies,
        engines=tuple(args.engines),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stretto", description="Make diffusion models generate fast.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="generate images (PNG; a prompt x seed grid for several)")
    p.add_argument("prompts", nargs="+", help='e.g. "a red circle left of a blue square"')
    _add_sampling_args(p)
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--num-seeds", type=int, default=1, help="images per prompt, seeds seed..seed+N-1")
    p.add_argument("--out", default="stretto.png", help="output PNG path")
    _add_model_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("demo", help="the main job: a grid from the shipped model + full vs fast table")
    p.add_argument("--out", default="stretto-demo.png")
    _add_model_args(p)
    p.set_defaults(func=cmd_demo)

    train = sub.add_parser("train", help="train a shipped model").add_subparsers(dest="what", required=True)
    p = train.add_parser("image", help="the text-to-image flow-matching Flux (resumes from --out)")
    p.add_argument("--out", default="runs/shapes-flux")
    p.add_argument("--steps", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train_image)
    p = train.add_parser("classifier", help="the evaluation classifier (prompt accuracy and FID features)")
    p.add_argument("--out", default="runs/shapes-classifier")
    p.add_argument("--steps", type=int, default=1600)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train_classifier)

    bench = sub.add_parser("bench", help="benchmarks: speed and quality").add_subparsers(dest="what", required=True)
    p = bench.add_parser("samplers", help="every sampler at NFE 2..32 vs a 100-step Euler reference")
    p.add_argument("--json", default="benchmarks/results/samplers.json")
    p.add_argument("--plot", default="benchmarks/results/samplers.png")
    p.add_argument("--num-images", type=int, default=256)
    p.add_argument("--nfe", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    p.add_argument("--shift", type=float, default=DEFAULT_SHIFT)
    _add_model_args(p)
    p.set_defaults(func=cmd_bench_samplers)
    p = bench.add_parser("cache", help="every cache policy and diffusers' own caches vs full compute")
    p.add_argument("--json", default="benchmarks/results/cache.json")
    p.add_argument("--plot", default="benchmarks/results/cache.png")
    p.add_argument("--num-images", type=int, default=128)
    p.add_argument("--setup", nargs="+", default=["euler:50", "dpm++2m:20"], help="SAMPLER:STEPS; the first gets "
                   "every setting, the others one middle setting per policy")  # fmt: skip
    p.add_argument("--policies", nargs="+", default=None, help="only these policy names (both engines)")
    p.add_argument("--engines", nargs="+", default=["stretto", "diffusers"], help="stretto and/or diffusers")
    p.add_argument("--wall-check", nargs="+", default=None, metavar="SPEC", help="instead: time these --cache "
                   "specs interleaved with full compute (euler 50), to benchmarks/results/cache-wall.json")  # fmt: skip
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    _add_model_args(p)
    p.set_defaults(func=cmd_bench_cache)

    from stretto.cli.text import add_bench_text_command, add_text_command, add_train_text_command

    add_text_command(sub)
    add_train_text_command(train)
    add_bench_text_command(bench)

    from stretto.cli.world import add_bench_stream_command, add_stream_command, add_train_world_command

    add_stream_command(sub)
    add_train_world_command(train)
    add_bench_stream_command(bench)

    from stretto.cli.search import add_search_commands
    from stretto.cli.tune import add_calibrate_commands

    add_calibrate_commands(sub)
    add_search_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if hasattr(args, "device"):
            from stretto.devices import resolve_device

            args.device = resolve_device(args.device)
        args.func(args)
    except (ValueError, FloatingPointError) as err:
        # Our boundary errors (bad prompt, setting, checkpoint, device, non-finite sample) all land here.
        print(f"stretto: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stretto: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
