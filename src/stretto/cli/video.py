"""`stretto stream --model <Wan checkpoint>`: stream a causal video model from a text prompt, switchable mid-stream."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from stretto.cli import INTERRUPTED
from stretto.cli import args as shared


def parse_switch(text: str) -> tuple[int, str]:
    """'FRAME:PROMPT' -> (frame, prompt), or a one-line error naming the bad value."""
    frame, sep, prompt = text.partition(":")
    if not sep or not frame.strip().isdigit():
        raise ValueError(f"--switch must look like FRAME:PROMPT (e.g. 48:a dog runs), got {text!r}")
    if not prompt.strip():
        raise ValueError(f"--switch {text!r} has an empty prompt; give the text to switch to at frame {frame}")
    return int(frame), prompt


def cmd_stream_video(args: argparse.Namespace) -> int | None:
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from stretto.images import save_gif
    from stretto.pipelines.video import stream

    if args.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {args.frames}")
    if not args.prompt:
        raise ValueError("streaming a video model needs --prompt TEXT")
    switches = dict(parse_switch(s) for s in args.switch)
    size = None
    if args.latent_size:
        h, sep, w = args.latent_size.partition("x")
        if not (sep and h.isdigit() and w.isdigit()):
            raise ValueError(
                f"--latent-size must look like HxW in latent pixels (e.g. 60x104), got {args.latent_size!r}"
            )
        size = (int(h), int(w))
    frames = stream(
        args.model, args.prompt, switches=switches, parts=args.parts, frames=args.frames, seed=args.seed,
        device=args.device, latent_size=size, ar_step=args.ar_step, mode=args.mode, steps=args.steps,
        window=None if args.mode == "kv" else args.window, sinks=args.sinks,
        kv_budget_mib=args.kv_budget_mib, feature_cache=args.cache, context_noise=args.context_noise,
    )  # fmt: skip
    out, latency, interrupted = [], [], False
    began = time.perf_counter()
    try:
        for frame in frames:
            out.append(frame.pixels[0].cpu())
            latency.append(frame.latency_s * 1000)
    except KeyboardInterrupt:
        interrupted = True  # keep what was generated
    finally:
        frames.close()
    seconds = time.perf_counter() - began
    if not out:
        print("stretto: interrupted before the first frame; nothing written", file=sys.stderr)
        return INTERRUPTED
    video = torch.stack(out)
    if video.shape[1] == 3:  # decoded by the model's VAE
        path = save_gif([video], args.out, fps=args.gif_fps, scale=args.scale)
        what = "video frames"
    else:  # no VAE: the latents, for the user's own decoder
        path = Path(args.out).with_suffix(".safetensors")
        save_file({"latents": video.contiguous()}, path)
        what = "latent frames (no VAE found; pass --parts)"
    lat = np.array(latency)
    print(f"wrote {path}: {len(out)} {what} ({args.mode}, {args.steps or 'default'} steps{shared.cache_note(args)}) in "
          f"{seconds:.1f} s; block latency p50 {np.percentile(lat, 50):.0f} ms, "
          f"p95 {np.percentile(lat, 95):.0f} ms")  # fmt: skip
    if interrupted:
        print(f"stretto: interrupted; {path} holds the frames generated so far", file=sys.stderr)
        return INTERRUPTED
    return None


def add_video_arguments(p: argparse.ArgumentParser) -> None:
    """The flags `stretto stream` takes for a causal video model (a Wan checkpoint as --model)."""
    p.add_argument("--prompt", default=None, help="video model: the text to stream from")
    p.add_argument("--switch", action="append", default=[], metavar="FRAME:PROMPT",
                   help="video model: switch to PROMPT from latent frame FRAME on (repeatable)")  # fmt: skip
    p.add_argument("--parts", default=None, help="video model: diffusers Wan pipeline folder with its text encoder "
                   "and VAE (default: the folder the model sits in)")  # fmt: skip
    p.add_argument("--ar-step", type=int, default=None, help="video model: diffusion forcing (SkyReels-V2): blocks in "
                   "flight together, each this many steps behind the one before (< --steps)")  # fmt: skip
    p.add_argument("--latent-size", default=None, metavar="HxW", help="video model: latent frame size, video size / "
                   "8 (default the model's: 60x104 = 480x832 for Self Forcing)")  # fmt: skip
