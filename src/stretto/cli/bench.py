"""`stretto bench samplers|distill|cache|text|stream|serve`: written to stretto-results/ unless given paths."""

from __future__ import annotations

import argparse

from stretto.cli import args as shared
from stretto.cli.text import TEXT_KINDS


def cmd_bench_samplers(args: argparse.Namespace) -> None:
    from stretto.bench.samplers import run_sampler_bench
    from stretto.checkpoints import check_kind
    from stretto.models.shapes_flux import ShapesFlux

    check_kind(args.model, ShapesFlux.kind)
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
    from stretto.checkpoints import check_kind
    from stretto.models.shapes_flux import ShapesFlux
    from stretto.models.shapes_unet import ShapesUNet

    check_kind(args.model, [ShapesFlux.kind, ShapesUNet.kind])
    if args.wall_check:
        json_path = args.json or f"{shared.RESULTS_DIR}/cache-wall.json"
        plot_path = f"{shared.RESULTS_DIR}/cache-wall.png" if args.plot is None else args.plot
        run_wall_check(args.wall_check, json_path, model=args.model, device=args.device, num_images=args.num_images,
                       repeats=args.repeats, plot_path=plot_path or None)  # fmt: skip
        return
    if args.compile:
        from stretto.bench.cache_compile import run_compile_check

        json_path = args.json or f"{shared.RESULTS_DIR}/cache-compile.json"
        run_compile_check(args.compile, json_path, model=args.model, device=args.device, num_images=args.num_images)
        return
    setups = []
    for item in args.setup:
        sampler, _, steps = item.partition(":")
        if not steps.isdigit() or int(steps) < 1:
            raise ValueError(f"--setup must look like SAMPLER:STEPS, e.g. euler:50, got {item!r}")
        setups.append((sampler, int(steps)))
    run_cache_bench(
        json_path=args.json or f"{shared.RESULTS_DIR}/cache.json",
        plot_path=f"{shared.RESULTS_DIR}/cache.png" if args.plot is None else args.plot,
        model=args.model,
        device=args.device,
        num_images=args.num_images,
        guidance=args.guidance,
        setups=tuple(setups),
        policies=args.policies,
        engines=tuple(args.engines),
    )


def cmd_bench_text(args: argparse.Namespace) -> None:
    from stretto import checkpoints
    from stretto.bench.text import run_text_bench
    from stretto.checkpoints import check_kind
    from stretto.data import text_tasks

    # --peers alone compares with the peer engines only; name --models to also run the sweep
    models = args.models.split(",") if args.models else [] if args.peers else ["text-masked", "text-block"]
    for name in models:
        check_kind(name, TEXT_KINDS)
    recorded = {tuple(checkpoints.trained_tasks(name)) for name in models}
    same = recorded.pop() if len(recorded) == 1 else ()
    tasks = text_tasks.task_names(args.tasks) if args.tasks else same or text_tasks.task_names("all")
    # default: the longest answer and an end-of-text, in whole blocks of 16 (64 for the short tasks, 256 for long)
    gen_length = args.gen_length or -(-(text_tasks.max_answer(tasks) + 1) // 16) * 16
    if gen_length <= text_tasks.max_answer(tasks):
        raise ValueError(
            f"--gen-length {gen_length} cannot hold the answers of --tasks {args.tasks or ','.join(tasks)} (up to "
            f"{text_tasks.max_answer(tasks)} tokens and an end-of-text); allowed: > {text_tasks.max_answer(tasks)}"
        )
    peers = None
    if args.peers:
        from stretto.bench.tiny_published import Size

        size = Size(hidden=args.peer_width, layers=args.peer_layers)
        peers = {"gen_length": gen_length, "batch_size": args.batch_size, "size": size, "device": args.device}
    sweep = {}
    if args.decode:
        sweep["rules"] = tuple(args.decode)
    if args.cache:
        sweep["caches"] = caches_by_kind(args.cache)
    if args.sparse:
        sweep["sparse"] = tuple(args.sparse)
    run_text_bench(
        json_path=args.json,
        plot_path=args.plot,
        models=models,
        n_per_task=args.n_per_task,
        batch_size=args.batch_size,
        gen_length=gen_length,
        tasks=tasks,
        device=args.device,
        continuous=args.continuous,
        peers=peers,
        **sweep,
    )


def caches_by_kind(specs: list[str]) -> dict[str, tuple[str, ...]]:
    """--cache specs -> those that apply, per model kind (a block-lm runs none and block, a masked-lm the rest)."""
    from stretto.pipelines.text.caches import parse_cache

    modes = {spec: parse_cache(spec) for spec in specs}  # a bad spec fails here, in one line
    return {k: tuple(s for s, m in modes.items() if m.kinds is None or k in m.kinds) for k in TEXT_KINDS}


def cmd_bench_stream(args: argparse.Namespace) -> None:
    from stretto.bench.stream import run_stream_bench

    for n in args.frames:
        if n < 1:
            raise ValueError(f"--frames must be >= 1, got {n}")
    run_stream_bench(
        args.json, args.plot, models=tuple(args.models), lengths=tuple(args.frames), modes=tuple(args.modes),
        steps=args.steps, window=args.window, sinks=args.sinks, drift_episodes=args.drift_episodes,
        drift_frames=args.drift_frames, device=args.device, gif_path=args.gif or None,
        kv_budget_mib=args.kv_budget_mib, video_models=tuple(args.video_models),
        feature_caches=tuple(args.feature_cache), cache_repeats=args.cache_repeats, drift_only=args.drift_only,
        context_noise=args.context_noise,
    )  # fmt: skip


def cmd_bench_serve(args: argparse.Namespace) -> None:
    try:
        from stretto.bench.serve import run_serve_bench
    except ImportError as err:
        raise ValueError(f"bench serve needs the serve extra and httpx: pip install 'stretto[test]' ({err})") from None
    for n in args.concurrency:
        if not 1 <= n <= 256:
            raise ValueError(f"--concurrency must be integers in [1, 256], got {n}")
    run_serve_bench(
        args.json, args.plot, concurrency=tuple(args.concurrency), requests=args.requests,
        duration_s=args.duration, steps=args.steps, max_tokens=args.max_tokens, blocks=args.blocks,
        leave_every=args.leave_every, queue_size=args.queue_size, batch_clients=args.batch_clients,
        batch_images=args.batch_images, threads=args.torch_threads,
    )  # fmt: skip


def cmd_bench_distill(args: argparse.Namespace) -> None:
    from stretto.bench.distill import run_distill_bench
    from stretto.checkpoints import check_kind
    from stretto.models.shapes_flux import ShapesFlux

    for name in [args.model, *args.students]:
        check_kind(name, ShapesFlux.kind)
    run_distill_bench(
        args.json, args.plot, args.grid, teacher=args.model, students=args.students, device=args.device,
        num_images=args.num_images, guidance=args.guidance,
    )  # fmt: skip


def add_bench_distill_command(bench_subparsers) -> argparse.ArgumentParser:
    """`stretto bench distill`."""
    p = bench_subparsers.add_parser(
        "distill", help="the teacher at 50 Euler steps, DPM-Solver++ at 4/2/1 NFE, and distilled students"
    )
    shared.add_results(p, "distill")
    p.add_argument(
        "--grid", default=f"{shared.RESULTS_DIR}/distill-grid.png",
        help=f"prompt x method image grid, '' for none (default {shared.RESULTS_DIR}/distill-grid.png)",
    )  # fmt: skip
    p.add_argument("--num-images", type=int, default=256, help="prompts, one image each (default 256)")
    p.add_argument(
        "--students", nargs="+", default=["shapes-flux-dmd4", "shapes-flux-dmd1", "shapes-flux-flowmap"],
        help="distilled students (shipped names or folders; default shapes-flux-dmd4 shapes-flux-dmd1 "
        "shapes-flux-flowmap)",
    )  # fmt: skip
    shared.add_guidance(p)
    shared.add_model(p)
    shared.add_device(p)
    p.set_defaults(func=cmd_bench_distill)
    return p


def add_bench_samplers_command(bench_subparsers) -> argparse.ArgumentParser:
    """`stretto bench samplers`."""
    p = bench_subparsers.add_parser("samplers", help="every sampler at NFE 2..32 vs a 100-step Euler reference")
    shared.add_results(p, "samplers")
    p.add_argument("--num-images", type=int, default=256, help="prompts, one image each (default 256)")
    p.add_argument("--nfe", type=int, nargs="+", default=[2, 4, 8, 16, 32], help="model calls per image to test")
    shared.add_guidance(p)
    shared.add_shift(p)
    shared.add_model(p)
    shared.add_device(p)
    p.set_defaults(func=cmd_bench_samplers)
    return p


def add_bench_cache_command(bench_subparsers) -> argparse.ArgumentParser:
    """`stretto bench cache`."""
    p = bench_subparsers.add_parser("cache", help="every cache policy and other engines' caches vs full compute")
    p.add_argument("--json", default=None, help=f"result JSON (default {shared.RESULTS_DIR}/cache.json, with "
                   f"--wall-check {shared.RESULTS_DIR}/cache-wall.json; the committed results are in "
                   "benchmarks/results/)")  # fmt: skip
    p.add_argument("--plot", default=None, help=f"plot PNG, '' for none (default {shared.RESULTS_DIR}/cache.png, with "
                   f"--wall-check {shared.RESULTS_DIR}/cache-wall.png)")  # fmt: skip
    p.add_argument("--num-images", type=int, default=128, help="prompts, one image each (default 128)")
    p.add_argument("--setup", nargs="+", default=["euler:50", "dpm++2m:20"], help="SAMPLER:STEPS; the first gets "
                   "every setting, the others one middle setting per policy")  # fmt: skip
    p.add_argument("--policies", nargs="+", default=None, help="only these policy names (every engine)")
    p.add_argument("--engines", nargs="+", default=["stretto", "diffusers", "cache-dit"],
                   help="any of stretto, diffusers, cache-dit (skipped, saying so, when not installed)")  # fmt: skip
    p.add_argument("--wall-check", nargs="+", default=None, metavar="SPEC", help="instead: time these --cache "
                   "specs interleaved with full compute (euler 50), to --json")  # fmt: skip
    p.add_argument("--repeats", action=shared.IntInRange, low=1, high=100, default=3,
                   help="--wall-check: cached runs per spec, each between two full runs (default 3)")  # fmt: skip
    p.add_argument("--compile", nargs="+", default=None, metavar="SPEC", help="instead: time these --cache specs "
                   "with and without torch.compile of the blocks, interleaved (euler 50), to --json")  # fmt: skip
    shared.add_guidance(p)
    shared.add_model(p)
    shared.add_device(p)
    p.set_defaults(func=cmd_bench_cache)
    return p


def add_bench_text_command(bench_subparsers) -> argparse.ArgumentParser:
    """`stretto bench text`."""
    p = bench_subparsers.add_parser("text", help="every decoding rule x cache on the held-out text tasks")
    shared.add_results(p, "text")
    p.add_argument("--models", default=None, help="comma-separated names or folders (default text-masked,text-block; "
                   "none with --peers)")  # fmt: skip
    p.add_argument("--n-per-task", type=int, default=8, help="held-out examples per task (default 8)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts decoded together (default 8)")
    p.add_argument("--tasks", default=None, help="held-out tasks: all (the short ones), long (answers of 128-255 "
                   "characters) or comma-separated names (default: the tasks the models were trained on, when "
                   "they agree; else all)")  # fmt: skip
    p.add_argument("--gen-length", type=int, default=None, help="tokens to generate (default: the longest answer "
                   "and an end-of-text in blocks of 16: 64 for the short tasks, 256 for long ones)")  # fmt: skip
    p.add_argument("--continuous", type=int, default=16, help="also every setting at batch 1 and under continuous "
                   "batching at this batch size, against the static baseline there (default 16; 0: off)")  # fmt: skip
    p.add_argument("--decode", nargs="+", default=None, metavar="RULE",
                   help="only these decoding rules, e.g. threshold:tau=0.9 learned:tau=0.9,eot (default: the "
                   "standard list; the baseline lowconf:tokens=1 is always run)")  # fmt: skip
    p.add_argument("--cache", nargs="+", default=None, metavar="CACHE",
                   help="only these cache modes, each run on the models it applies to, e.g. none dual (default: "
                   "every mode)")  # fmt: skip
    p.add_argument("--sparse", nargs="+", default=None, metavar="SPARSE",
                   help="attention settings: none (dense) and/or SparseD specs, e.g. sparsed:keep=0.3 (default: "
                   "none sparsed:keep=0.3; static batches only)")  # fmt: skip
    p.add_argument("--peers", action="store_true", help="diffusers' LLaDA2Pipeline / DiffusionGemmaPipeline and "
                   "transformers' DiffusionGemma generate beside stretto, on tiny random published-layout models: "
                   "same tokens where the algorithm is the same, tokens/s side by side")  # fmt: skip
    p.add_argument("--peer-width", type=int, default=128, help="hidden width of the --peers models (default 128)")
    p.add_argument("--peer-layers", type=int, default=4, help="layers of the --peers models (default 4)")
    shared.add_device(p)
    p.set_defaults(func=cmd_bench_text)
    return p


def add_bench_stream_command(bench_subparsers) -> argparse.ArgumentParser:
    """`stretto bench stream`."""
    from stretto.bench.stream import DEFAULT_MODELS, VIDEO_MODELS
    from stretto.bench.stream_cache import DEFAULT_FEATURE_CACHES
    from stretto.pipelines.world import MODES

    p = bench_subparsers.add_parser("stream", help="world-model streaming: fps, latency, KV memory, drift")
    shared.add_results(p, "stream")
    p.add_argument("--gif", default=f"{shared.RESULTS_DIR}/stream.gif",
                   help="GIF of simulator | each model, '' for none (default stretto-results/stream.gif)")  # fmt: skip
    p.add_argument("--models", nargs="*", default=list(DEFAULT_MODELS), help="world models: names or folders")
    p.add_argument("--video-models", nargs="*", choices=VIDEO_MODELS, default=list(VIDEO_MODELS),
                   help="tiny random causal video models on diffusers' classes, for speed (default all)")  # fmt: skip
    p.add_argument("--frames", nargs="+", type=int, default=[64, 2000], help="stream lengths to time (each >= 1)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="how the past is kept")
    shared.add_stream_settings(p)
    p.add_argument("--feature-cache", nargs="*", default=list(DEFAULT_FEATURE_CACHES), metavar="POLICY",
                   help="feature-cache policies to run inside each model's kv-rolling stream at the shortest "
                   "--frames, each against the uncached stream (speedup, PSNR vs the uncached frames); none given: "
                   f"no cache rows (default: {' '.join(DEFAULT_FEATURE_CACHES)})")  # fmt: skip
    p.add_argument("--cache-repeats", action=shared.IntInRange, low=1, high=100, default=3,
                   help="rounds of uncached and cached streams, alternately, for the speedups (default 3)")  # fmt: skip
    p.add_argument("--drift-episodes", type=int, default=8, help="held-out episodes of the drift curve (default 8)")
    p.add_argument("--drift-frames", type=int, default=400, help="frames per drift episode (default 400)")
    p.add_argument("--drift-only", action="store_true",
                   help="only the drift curves (PSNR, position error, object recall per frame; horizon windows) "
                   "and the GIF: no timed rows; the plot shows the three curves")  # fmt: skip
    shared.add_device(p)
    p.set_defaults(func=cmd_bench_stream)
    return p


def add_bench_serve_command(bench_subparsers) -> argparse.ArgumentParser:
    """`stretto bench serve`."""
    p = bench_subparsers.add_parser("serve", help="load test of stretto serve on loopback: throughput, latency, "
                                    "batching, 429s, completeness, memory")  # fmt: skip
    shared.add_results(p, "serve")
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16],
                   help="concurrent clients of each mixed level, each in [1, 256] (default 1 4 16)")  # fmt: skip
    p.add_argument("--requests", action=shared.IntInRange, low=1, high=100_000, default=48,
                   help="requests per level (default 48)")  # fmt: skip
    p.add_argument("--duration", type=float, default=60.0, help="seconds per level after which no request starts")
    p.add_argument("--steps", action=shared.IntInRange, low=1, high=50, default=8, help="image steps (default 8)")
    p.add_argument("--max-tokens", action=shared.IntInRange, low=1, high=4096, default=32,
                   help="tokens per streamed completion (default 32)")  # fmt: skip
    p.add_argument("--blocks", action=shared.IntInRange, low=1, high=64, default=2,
                   help="world blocks per stream (default 2)")  # fmt: skip
    p.add_argument("--leave-every", action=shared.IntInRange, low=0, high=1000, default=4,
                   help="every Nth stream leaves after its first event (default 4; 0: none)")  # fmt: skip
    p.add_argument("--queue-size", action=shared.IntInRange, low=1, high=100_000, default=8,
                   help="the mixed server's queue; past it requests get 429 (default 8)")  # fmt: skip
    p.add_argument("--batch-clients", action=shared.IntInRange, low=1, high=256, default=16,
                   help="image clients of the batching comparison (default 16)")  # fmt: skip
    p.add_argument("--batch-images", action=shared.IntInRange, low=1, high=100_000, default=64,
                   help="images per server in the batching comparison (default 64)")  # fmt: skip
    p.add_argument("--torch-threads", action=shared.IntInRange, low=1, high=1024, default=None,
                   help="the servers' torch threads (default: the usable cores)")  # fmt: skip
    p.set_defaults(func=cmd_bench_serve)
    return p


def add_bench_commands(subparsers) -> argparse.ArgumentParser:
    """`stretto bench ...`."""
    bench = subparsers.add_parser("bench", help="benchmarks: speed and quality")
    what = bench.add_subparsers(dest="what", required=True)
    add_bench_samplers_command(what)
    add_bench_distill_command(what)
    add_bench_cache_command(what)
    add_bench_text_command(what)
    add_bench_stream_command(what)
    add_bench_serve_command(what)
    return bench
