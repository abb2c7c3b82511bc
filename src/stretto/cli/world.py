"""`stretto stream`: stream the world model block by block, steered by actions, to a GIF (or live in the terminal).

A Wan checkpoint as --model (Self-Forcing / CausVid release, diffusers Wan or SkyReels-V2 folder) streams that
video model from --prompt instead (`stretto.cli.video`). `--parallel ulysses` under torchrun splits the world model's
tokens over the processes (every rank streams the same frames; rank 0 writes the GIF and reports).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Iterable, Iterator

from stretto.cli import INTERRUPTED
from stretto.cli import args as shared

DEFAULT_WORLD_MODEL = "world-sf"


def cmd_stream(args: argparse.Namespace) -> int | None:
    from stretto.models.wan_checkpoints import is_wan_checkpoint

    if is_wan_checkpoint(args.model):
        from stretto.cli.video import cmd_stream_video

        if args.memory:
            raise ValueError(f"--memory {args.memory} follows the camera of a world model's actions; "
                             f"{args.model!r} is a text-to-video model")  # fmt: skip
        if args.parallel:
            raise ValueError(f"--parallel {args.parallel} splits the tokens of stretto's world model (world-dit); "
                             f"{args.model!r} is a text-to-video model")  # fmt: skip

        return cmd_stream_video(args)
    if args.prompt or args.switch or args.parts:
        raise ValueError(f"--prompt, --switch and --parts are for video models; {args.model!r} is a world model")
    if args.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {args.frames}")
    if not args.parallel:
        return _stream_world(args, rank=0)
    if args.interactive:
        raise ValueError(f"--parallel {args.parallel} streams on every rank from the same actions: no --interactive")
    import stretto.parallel

    args.device = stretto.parallel.init(args.device)
    try:
        return _stream_world(args, rank=stretto.parallel.rank())
    finally:
        stretto.parallel.finish()


def _stream_world(args: argparse.Namespace, rank: int) -> int | None:
    """Load the world model, stream it and (on rank 0) write the GIF and print the summary."""
    import numpy as np
    import torch

    from stretto import checkpoints
    from stretto.cli.world_view import keyboard_actions, terminal_view
    from stretto.data import world
    from stretto.eval.metrics import frame_psnr
    from stretto.images import save_gif
    from stretto.models.kv_cache import MIB
    from stretto.models.world_dit import WorldDiT
    from stretto.pipelines import world as world_pipeline

    model = checkpoints.load(args.model, device=args.device, kind=WorldDiT.kind)
    if args.interactive:
        actions = keyboard_actions()
    else:
        if args.actions:
            pattern = world.parse_actions(args.actions)
        else:
            pattern = world.random_actions(args.frames + 1, torch.Generator().manual_seed(args.seed))[1:]
        actions = (pattern * (args.frames // len(pattern) + 1))[: args.frames]
    used: list[int] = []  # the actions the model was given, for the simulator's ground truth
    stream = world_pipeline.stream_world(
        model, _recording(actions, used), world=args.world, seed=args.seed, frames=args.frames, mode=args.mode,
        steps=args.steps, window=None if args.mode == "kv" else args.window, sinks=args.sinks,
        max_frames=args.frames + 1, kv_budget_mib=args.kv_budget_mib, feature_cache=args.cache, memory=args.memory,
        parallel=args.parallel, context_noise=args.context_noise,
    )  # fmt: skip
    show = None
    if args.interactive:
        show = terminal_view() if sys.stdout.isatty() else lambda frame, caption: print(caption, flush=True)
    frames, latency = [], []
    interrupted, last = False, None
    began = time.perf_counter()
    try:
        started = _started(stream)
        for frame in started if args.interactive or rank else _progress(started, args.frames):
            last = frame
            frames.append(frame.pixels[0].cpu())
            latency.append(frame.latency_s * 1000)
            if show is not None:
                show(frame.pixels[0].cpu(), f"frame {frame.index}  {frame.latency_s * 1000:.0f} ms  "
                     f"action {world.ACTIONS[used[-1]]}")  # fmt: skip
    except KeyboardInterrupt:
        interrupted = True  # keep what was generated
    finally:
        stream.close()  # frees the cache
    seconds = time.perf_counter() - began
    if rank:  # every rank streamed the same frames; rank 0 writes and reports
        return INTERRUPTED if interrupted else None
    if not frames:
        if interrupted:
            print("stretto: interrupted before the first frame; nothing written", file=sys.stderr)
            return INTERRUPTED
        print("no frames generated")
        return None
    generated = torch.stack(frames)
    fpb = model.config.frames_per_block
    truth = world.simulate(args.world, [world.STAY] * fpb + used[: len(frames)]).frames[fpb:]
    path = save_gif([truth, generated] if args.compare else [generated], args.out, fps=args.gif_fps, scale=args.scale)
    psnr = frame_psnr(generated[:, None], truth[:, None]).mean()
    lat = np.array(latency)
    rate = "" if args.interactive else f" in {seconds:.1f} s = {len(frames) / seconds:.1f} frames/s"
    print(
        f"wrote {path}: {len(frames)} frames ({args.mode}, {args.steps or world_pipeline.model_steps(model)} steps"
        f"{shared.cache_note(args)}){rate}; "
        f"latency p50 {np.percentile(lat, 50):.1f} ms, p95 {np.percentile(lat, 95):.1f} ms; PSNR vs simulator "
        f"{psnr:.1f} dB"
    )
    if args.parallel:
        print(f"--parallel {args.parallel}: KV cache {last.kv_bytes / MIB:.3g} MiB per rank; rank 0's collectives "
              f"moved {last.comm_bytes} bytes")  # fmt: skip
    if interrupted:
        print(f"stretto: interrupted; {path} holds the {len(frames)} frames generated so far", file=sys.stderr)
        return INTERRUPTED
    return None


def _recording(actions: Iterable[int], used: list[int]) -> Iterator[int]:
    for a in actions:
        used.append(int(a))
        yield a


def _started(stream: Iterator) -> Iterator:
    """The stream with its first frame computed: a generator checks its settings only when first asked for a
    frame, and bad settings should fail before a progress bar is drawn."""
    first = next(stream, None)
    return iter(()) if first is None else itertools.chain([first], stream)


def _progress(frames: Iterator, total: int) -> Iterator:
    from tqdm import tqdm

    yield from tqdm(frames, total=total, desc="stream", unit="frame")


def add_stream_command(subparsers) -> argparse.ArgumentParser:
    """`stretto stream`."""
    from stretto.data.world import ACTION_NAMES
    from stretto.pipelines.world import MODES

    keys = ", ".join(f"{k}={v}" for k, v in ACTION_NAMES.items())
    from stretto.cli.video import add_video_arguments

    p = subparsers.add_parser("stream", help="stream a world model (actions) or a causal video model (text)")
    p.add_argument("--actions", default=None, help=f"action symbols ({keys}), repeated to --frames; "
                   "default a random walk")  # fmt: skip
    p.add_argument("--frames", type=int, default=240, help="frames to generate (>= 1, default 240)")
    p.add_argument("--out", default="world.gif", help="GIF of the stream (default world.gif)")
    shared.add_model(p, DEFAULT_WORLD_MODEL, what="world model (world-sf, world-tf), or a causal video model (a "
                     "Self-Forcing / CausVid .pt, a diffusers Wan or SkyReels-V2 folder)")  # fmt: skip
    add_video_arguments(p)
    p.add_argument("--world", action=shared.IntInRange, high=shared.MAX_SEED - 1, default=1_000_000,
                   help="map seed of the simulated world (prompt + truth, default 1000000)")  # fmt: skip
    shared.add_seed(p, "noise seed (and the random walk's)")
    p.add_argument("--mode", choices=MODES, default="kv-rolling", help="how the past is kept (default kv-rolling)")
    shared.add_stream_settings(p)
    p.add_argument("--cache", default=None, metavar="POLICY",
                   help='feature cache inside the stream, on the denoising steps (the commit pass computes every '
                   'block): e.g. "crossblock" (the previous block\'s same step on the first step, this block\'s '
                   'previous step on the third: plan=xcwc), "fora:interval=3,warmup=0"; stretto.cache.available() '
                   "lists all (default none)")  # fmt: skip
    p.add_argument("--memory", choices=["pose"], default=None,
                   help="memory beyond the rolling window (world models): pose = what was drawn, placed by the camera "
                   "moves of the actions, kept when the camera comes back (default none)")  # fmt: skip
    p.add_argument("--interactive", action="store_true", help="read actions from the keyboard (arrows/WASD, q)")
    p.add_argument("--parallel", choices=["ulysses"], default=None,
                   help="ulysses: the world model's tokens and KV cache heads over all processes "
                   "(torchrun --nproc-per-node 2 -m stretto.cli stream ...)")  # fmt: skip
    p.add_argument("--compare", action="store_true", help="GIF shows the simulator's frames beside the model's")
    p.add_argument("--scale", type=int, default=4, help="GIF pixel scale")
    p.add_argument("--gif-fps", type=float, default=12.0, help="GIF frames per second (default 12)")
    shared.add_device(p)
    p.set_defaults(func=cmd_stream)
    return p
