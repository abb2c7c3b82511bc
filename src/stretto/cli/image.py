"""`stretto generate`: images from the text-to-image model, one PNG (a prompt x seed grid for several)."""

from __future__ import annotations

import argparse

from stretto.cli import args as shared
from stretto.pipelines.image import DEFAULT_STEPS


def cmd_generate(args: argparse.Namespace) -> None:
    if args.num_seeds < 1:
        raise ValueError(f"--num-seeds must be >= 1, got {args.num_seeds}")
    if args.seed + args.num_seeds - 1 > shared.MAX_SEED:
        raise ValueError(f"--seed + --num-seeds - 1 must be <= {shared.MAX_SEED}, got {args.seed + args.num_seeds - 1}")
    if args.unconditional and args.prompts:
        raise ValueError(f"--unconditional takes no prompts, got {args.prompts}")
    if not args.unconditional and not args.prompts:
        raise ValueError("give at least one prompt, or --unconditional for unconditional samples")
    # Unconditional samples are the empty prompt at guidance 0 (the pipeline refuses an empty prompt otherwise).
    given = [""] if args.unconditional else args.prompts
    guidance = 0.0 if args.unconditional else args.guidance
    if not args.parallel:
        return _generate(args, given, guidance, rank=0)
    import stretto.parallel

    args.device = stretto.parallel.init(args.device)
    try:
        return _generate(args, given, guidance, rank=stretto.parallel.rank())
    finally:
        stretto.parallel.finish()


def _generate(args: argparse.Namespace, given: list[str], guidance: float, rank: int) -> None:
    """Load, generate, and (on rank 0) write the PNG and print the counts."""
    import stretto
    from stretto.images import save_images
    from stretto.models.shapes_flux import ShapesFlux
    from stretto.models.shapes_unet import ShapesUNet

    model = stretto.load(args.model, device=args.device, kind=[ShapesFlux.kind, ShapesUNet.kind])
    seeds = list(range(args.seed, args.seed + args.num_seeds))
    prompts = [p for p in given for _ in seeds]
    result = stretto.generate(
        model,
        prompts,
        steps=args.steps,
        sampler=args.sampler,
        guidance=guidance,
        shift=args.shift,
        seeds=seeds * len(given),
        time_shift=args.time_shift,
        cache=args.cache,
        parallel=args.parallel,
    )
    if rank:  # every rank holds the same images; rank 0 writes and reports
        return
    labels = [p or "(unconditional)" for p in given] if len(prompts) > 1 else None
    cols = [f"seed {s}" for s in seeds] if len(prompts) > 1 else None
    path = save_images(result.images, args.out, rows=len(given), row_labels=labels, col_labels=cols)
    s = result.stats
    print(
        f"wrote {path} ({len(prompts)} image(s)); {s.sampler} {s.steps} steps: {s.model_calls} model calls, "
        f"{s.total_block_evals} block evaluations, {s.wall_s:.2f} s"
    )
    if args.parallel == "cfg":
        print(f"--parallel cfg: counts are rank 0's (cond branch); {s.comm_bytes} bytes all-gathered")
    if s.cache is not None:
        t = s.cache.totals()
        print(f"cache {s.cache.policy}: {t['computed']:g} computed, {t['reused']:g} reused, {t['forecast']:g} forecast")


def add_generate_command(subparsers) -> argparse.ArgumentParser:
    """`stretto generate PROMPT...`."""
    p = subparsers.add_parser("generate", help="generate images (PNG; a prompt x seed grid for several)")
    p.add_argument("prompts", nargs="*", help='e.g. "a red circle left of a blue square" (several: one grid row each)')
    p.add_argument(
        "--unconditional",
        action="store_true",
        help="unconditional samples: the model's empty prompt at guidance 0 (--guidance is ignored); give no prompts",
    )
    shared.add_image_sampling(p, steps=DEFAULT_STEPS, model_defaults=True)
    shared.add_shift(p)
    p.add_argument("--time-shift", action="store_true", help="Time-Shift Sampler: variance-matched network sigma")
    shared.add_image_cache(p)
    shared.add_seed(p, "first noise seed")
    p.add_argument("--num-seeds", type=int, default=1, help="images per prompt, seeds seed..seed+N-1 (default 1)")
    p.add_argument("--out", default="stretto.png", help="output PNG path (default stretto.png)")
    shared.add_model(p)
    shared.add_device(p)
    p.add_argument(
        "--parallel",
        choices=["cfg", "ulysses"],
        default=None,
        help="cfg: the CFG branches on 2 processes; ulysses: the tokens over all processes "
        "(torchrun --nproc-per-node 2 -m stretto.cli generate ...)",
    )
    p.set_defaults(func=cmd_generate)
    return p
