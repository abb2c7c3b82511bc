"""The world-model commands of the CLI: `stretto stream`, `stretto train world`, `stretto bench stream`.

cli.py calls `add_stream_command(subparsers)`, `add_train_world_command(train_subparsers)` and
`add_bench_stream_command(bench_subparsers)`; handlers raise ValueError on bad input (cli.py prints it).
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_WORLD_MODEL = "world-sf"


def cmd_train_world(args: argparse.Namespace) -> None:
    from stretto.train.world import WorldTrainConfig, train_world

    out = args.out or ("runs/world-tf" if args.mode == "teacher-forcing" else "runs/world-sf")
    cfg = WorldTrainConfig(
        out=out, mode=args.mode, init=args.init, steps=args.steps, batch_size=args.batch_size, frames=args.frames,
        lr=args.lr, seed=args.seed, frames_per_block=args.frames_per_block, context_noise=args.context_noise,
        window=args.window, sinks=args.sinks, save_every=args.save_every, tf_weight=args.tf_weight,
    )  # fmt: skip
    print(f"exported {train_world(cfg)}")


def add_train_world_command(train_subparsers) -> argparse.ArgumentParser:
    from stretto.pipelines.world import DEFAULT_SINKS, DEFAULT_WINDOW

    p = train_subparsers.add_parser(
        "world", help="the action-conditioned world model: teacher forcing, then Self Forcing (resumes from --out)"
    )
    p.add_argument("--mode", choices=("teacher-forcing", "self-forcing"), default="teacher-forcing")
    p.add_argument("--init", default=None, help="self-forcing: the teacher-forced checkpoint to start from")
    p.add_argument("--out", default=None, help="default runs/world-tf or runs/world-sf")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--frames", type=int, default=10, help="clip length (teacher forcing) / rollout length (self)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames-per-block", type=int, default=1)
    p.add_argument("--context-noise", type=float, default=0.0, help="teacher forcing: max noise of the context")
    p.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="self forcing: rolling cache window")
    p.add_argument("--sinks", type=int, default=DEFAULT_SINKS, help="self forcing: sink frames")
    p.add_argument("--tf-weight", type=float, default=0.0, help="self forcing: + this x teacher-forcing loss")
    p.add_argument("--save-every", type=int, default=250)
    p.set_defaults(func=cmd_train_world)
    return p


def _settings(args: argparse.Namespace, frames: int):
    from stretto.pipelines.world import StreamSettings

    window = None if args.mode == "kv" else args.window
    return StreamSettings(mode=args.mode, steps=args.steps, window=window, sinks=args.sinks, max_frames=frames + 1)


def cmd_stream(args: argparse.Namespace) -> None:
    import time

    import numpy as np
    import torch

    from stretto import checkpoints
    from stretto.cli.world_view import keyboard_actions, terminal_view
    from stretto.data import world
    from stretto.eval.metrics import frame_psnr
    from stretto.images import save_gif
    from stretto.models.world_dit import WorldDiT
    from stretto.pipelines.world import stream

    if args.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {args.frames}")
    model = checkpoints.load(args.model, device=args.device, kind=WorldDiT.kind)
    settings = _settings(args, args.frames)
    settings.check(model)
    if args.interactive:
        actions = keyboard_actions()
    else:
        if args.actions:
            pattern = world.parse_actions(args.actions)
        else:
            pattern = world.random_actions(args.frames + 1, torch.Generator().manual_seed(args.seed))[1:]
        actions = (pattern * (args.frames // len(pattern) + 1))[: args.frames]
    fpb = model.config.frames_per_block
    prompt, prompt_actions, _ = world.prompt_block([args.world], [world.STAY] * fpb, fpb)
    frames, used, latency = [], [], []
    began = time.perf_counter()
    show = None
    if args.interactive:
        show = terminal_view() if sys.stdout.isatty() else lambda frame, caption: print(caption, flush=True)
    gen = stream(model, prompt.to(args.device), prompt_actions.to(args.device), _recording(actions, used), settings,
                 seed=args.seed,
                 frames=args.frames)  # fmt: skip
    try:
        for frame in gen if args.interactive else _progress(gen, args.frames):
            frames.append(frame.pixels[0].cpu())
            latency.append(frame.latency_s * 1000)
            if show is not None:
                show(frame.pixels[0].cpu(), f"frame {frame.index}  {frame.latency_s * 1000:.0f} ms  "
                     f"action {world.ACTIONS[used[-1]]}")  # fmt: skip
    except KeyboardInterrupt:
        gen.close()  # frees the cache; keep what was generated
    seconds = time.perf_counter() - began
    if not frames:
        print("no frames generated")
        return
    generated = torch.stack(frames)
    truth = world.simulate(args.world, [world.STAY] * fpb + used[: len(frames)]).frames[fpb:]
    panels = [truth, generated] if args.compare else [generated]
    path = save_gif(panels, args.out, fps=args.gif_fps, scale=args.scale)
    psnr = frame_psnr(generated[:, None], truth[:, None]).mean()
    lat = np.array(latency)
    rate = "" if args.interactive else f" in {seconds:.1f} s = {len(frames) / seconds:.1f} frames/s"
    print(
        f"wrote {path}: {len(frames)} frames ({args.mode}, {args.steps} steps){rate}; latency p50 "
        f"{np.percentile(lat, 50):.1f} ms, p95 {np.percentile(lat, 95):.1f} ms; PSNR vs simulator {psnr:.1f} dB"
    )


def _recording(actions, used: list[int]):
    for a in actions:
        used.append(int(a))
        yield a


def _progress(gen, total: int):
    from tqdm import tqdm

    yield from tqdm(gen, total=total, desc="stream", unit="frame")


def add_stream_command(subparsers) -> argparse.ArgumentParser:
    from stretto.data.world import ACTION_NAMES
    from stretto.pipelines.world import DEFAULT_SINKS, DEFAULT_STEPS, DEFAULT_WINDOW, MODES

    keys = ", ".join(f"{k}={v}" for k, v in ACTION_NAMES.items())
    p = subparsers.add_parser("stream", help="stream the world model block by block, steered by actions")
    p.add_argument("--actions", default=None, help=f"action symbols ({keys}), repeated to --frames; "
                   "default a random walk")  # fmt: skip
    p.add_argument("--frames", type=int, default=240, help="frames to generate (>= 1)")
    p.add_argument("--out", default="world.gif", help="GIF of the stream")
    p.add_argument("--model", default=DEFAULT_WORLD_MODEL, help="shipped world model (world-sf, world-tf) or folder")
    p.add_argument("--world", type=int, default=1_000_000, help="map seed of the simulated world (prompt + truth)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (and the random walk's)")
    p.add_argument("--mode", choices=MODES, default="kv-rolling")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="denoising steps per block")
    p.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="frames kept besides the sinks")
    p.add_argument("--sinks", type=int, default=DEFAULT_SINKS, help="sink frames never evicted")
    p.add_argument("--interactive", action="store_true", help="read actions from the keyboard (arrows/WASD, q)")
    p.add_argument("--compare", action="store_true", help="GIF shows the simulator's frames beside the model's")
    p.add_argument("--scale", type=int, default=4, help="GIF pixel scale")
    p.add_argument("--gif-fps", type=float, default=12.0)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_stream)
    return p


def cmd_bench_stream(args: argparse.Namespace) -> None:
    from stretto.bench.stream import run_stream_bench

    for n in args.frames:
        if n < 1:
            raise ValueError(f"--frames must be >= 1, got {n}")
    run_stream_bench(
        args.json, args.plot, models=tuple(args.models), lengths=tuple(args.frames), modes=tuple(args.modes),
        steps=args.steps, window=args.window, sinks=args.sinks, drift_episodes=args.drift_episodes,
        drift_frames=args.drift_frames, device=args.device, gif_path=args.gif or None,
    )  # fmt: skip


def add_bench_stream_command(bench_subparsers) -> argparse.ArgumentParser:
    from stretto.bench.stream import DEFAULT_MODELS
    from stretto.pipelines.world import DEFAULT_SINKS, DEFAULT_STEPS, DEFAULT_WINDOW, MODES

    p = bench_subparsers.add_parser("stream", help="world-model streaming: fps, latency, KV memory, drift")
    p.add_argument("--json", default="benchmarks/results/stream.json")
    p.add_argument("--plot", default="benchmarks/results/stream.png")
    p.add_argument("--gif", default="benchmarks/results/stream.gif", help="simulator | each model ('' = none)")
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    p.add_argument("--frames", nargs="+", type=int, default=[64, 2000])
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--window", type=int, default=DEFAULT_WINDOW)
    p.add_argument("--sinks", type=int, default=DEFAULT_SINKS)
    p.add_argument("--drift-episodes", type=int, default=8)
    p.add_argument("--drift-frames", type=int, default=400)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_bench_stream)
    return p
