"""`stretto distill dmd2|flowmap|self-forcing`: few-step students of the image teacher and Self Forcing of the
world model (defaults: the shipped recipes)."""

from __future__ import annotations

import argparse

from stretto.cli import args as shared


def _grid(text: str) -> list[float]:
    try:
        return [float(s) for s in text.split(",")]
    except ValueError:
        raise ValueError(f"--grid must be comma-separated sigmas such as 1,0.75,0.5,0.25, got {text!r}") from None


def cmd_distill_dmd2(args: argparse.Namespace) -> None:
    from stretto.distill.image_dmd import DMDConfig, distill_dmd

    cfg = DMDConfig(
        teacher=args.teacher, out=args.out or f"runs/shapes-flux-dmd{len(_grid(args.grid))}", steps=args.steps,
        batch_size=args.batch_size, grid=_grid(args.grid), guidance=args.guidance, fake_updates=args.fake_updates,
        lr=args.lr, fake_lr=args.fake_lr, save_every=args.save_every, seed=args.seed, device=args.device,
        continue_from=args.continue_from,
    )  # fmt: skip
    print(f"exported {distill_dmd(cfg)}")


def cmd_distill_flowmap(args: argparse.Namespace) -> None:
    from stretto.distill.flow_map import FlowMapConfig, distill_flow_map

    cfg = FlowMapConfig(
        teacher=args.teacher, out=args.out, steps=args.steps, batch_size=args.batch_size, guidance=args.guidance,
        lr=args.lr, save_every=args.save_every, seed=args.seed, device=args.device,
        rollout_fraction=args.rollout_fraction, continue_from=args.continue_from,
    )  # fmt: skip
    print(f"exported {distill_flow_map(cfg)}")


def cmd_distill_self_forcing(args: argparse.Namespace) -> None:
    from stretto.distill.world_dmd import WorldDMDConfig, distill_self_forcing

    cfg = WorldDMDConfig(
        teacher=args.teacher, init=None if args.init == "teacher" else args.init, out=args.out, steps=args.steps,
        batch_size=args.batch_size,
        frames=args.frames, denoise_steps=args.denoise_steps, window=args.window, sinks=args.sinks,
        fake_updates=args.fake_updates, lr=args.lr, fake_lr=args.fake_lr, save_every=args.save_every, seed=args.seed,
        device=args.device,
    )  # fmt: skip
    print(f"exported {distill_self_forcing(cfg)}")


def add_self_forcing_command(what) -> None:
    """`stretto distill self-forcing`: the world model trained on its own rollouts by distribution matching."""
    from stretto.distill.world_dmd import WorldDMDConfig

    d = WorldDMDConfig()
    p = what.add_parser(
        "self-forcing", help="Self Forcing with DMD: the world model's own rollouts scored by its teacher"
    )
    p.add_argument(
        "--teacher", default=d.teacher,
        help=f"the real score: a world model trained with --mode clip-score (default {d.teacher})",
    )  # fmt: skip
    p.add_argument(
        "--init", default=d.init,
        help=f"the generator's starting checkpoint, 'teacher' for a copy of the teacher (default {d.init})",
    )  # fmt: skip
    p.add_argument("--out", default=d.out, help=f"run folder, resumed if it holds a run (default {d.out})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"generator updates (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"rollouts per update (default {d.batch_size})")
    p.add_argument(
        "--frames", type=int, default=d.frames, help=f"rollout length, prompt block included (default {d.frames})"
    )
    p.add_argument(
        "--denoise-steps", type=int, default=d.denoise_steps,
        help=f"denoising steps per block of the rollout: the student's sampler (default {d.denoise_steps})",
    )  # fmt: skip
    p.add_argument("--window", type=int, default=d.window, help=f"rolling cache window in frames (default {d.window})")
    p.add_argument("--sinks", type=int, default=d.sinks, help=f"sink frames kept in the cache (default {d.sinks})")
    p.add_argument(
        "--fake-updates", type=int, default=d.fake_updates,
        help=f"fake-score updates per generator update (default {d.fake_updates})",
    )  # fmt: skip
    p.add_argument("--lr", type=float, default=d.lr, help=f"generator learning rate (default {d.lr:g})")
    p.add_argument("--fake-lr", type=float, default=d.fake_lr, help=f"fake score learning rate (default {d.fake_lr:g})")
    p.add_argument(
        "--save-every", type=int, default=d.save_every, help=f"checkpoint every N updates (default {d.save_every})"
    )
    shared.add_seed(p, "seed of the rollouts and noise", high=shared.MAX_TRAIN_SEED)
    shared.add_device(p)
    p.set_defaults(func=cmd_distill_self_forcing)


def _common(
    p: argparse.ArgumentParser, steps: int, batch_size: int, lr: float, save_every: int, guidance: float, why: str
) -> None:
    p.add_argument("--teacher", default="shapes-flux", help="the many-step teacher (default shapes-flux)")
    p.add_argument("--steps", type=int, default=steps, help=f"student updates (default {steps})")
    p.add_argument("--batch-size", type=int, default=batch_size, help=f"images per update (default {batch_size})")
    p.add_argument("--guidance", type=float, default=guidance, help=f"{why}, baked in (default {guidance:g})")
    p.add_argument("--lr", type=float, default=lr, help=f"student learning rate (default {lr:g})")
    p.add_argument("--save-every", type=int, default=save_every, help=f"checkpoint every N (default {save_every})")
    p.add_argument(
        "--continue-from", default=None, metavar="RUN",
        help="start a new run (in an empty --out) from this run folder's saved state, settings free to change: "
        "a fine-tune in stages; the exported config keeps the history (default: start from the teacher)",
    )  # fmt: skip
    shared.add_seed(p, "seed of the batches and noise", high=shared.MAX_TRAIN_SEED)
    shared.add_device(p)


def add_distill_commands(subparsers) -> argparse.ArgumentParser:
    """`stretto distill dmd2|flowmap`."""
    p = subparsers.add_parser(
        "distill", help="few-step image students; Self Forcing of the world model (resumes from --out)"
    )
    what = p.add_subparsers(dest="method", required=True)
    dmd = what.add_parser("dmd2", help="DMD2: distribution matching + GAN, backward simulation on a sigma grid")
    _common(dmd, steps=500, batch_size=24, lr=4e-5, save_every=25, guidance=1.5, why="the real score's CFG scale")
    dmd.add_argument(
        "--out", default=None, help="run folder, resumed if it holds a run (default runs/shapes-flux-dmdN)"
    )
    dmd.add_argument(
        "--grid", default="1,0.75,0.5,0.25",
        help="the student's sigmas, high to low; it samples in any divisor of their count (default 1,0.75,0.5,0.25)",
    )  # fmt: skip
    dmd.add_argument("--fake-updates", type=int, default=5, help="fake-score updates per generator update (default 5)")
    dmd.add_argument("--fake-lr", type=float, default=4e-5, help="fake score + GAN head learning rate (default 4e-5)")
    dmd.set_defaults(func=cmd_distill_dmd2)
    fm = what.add_parser("flowmap", help="a flow map X(t -> r): any-step sampling, semigroup self-distillation")
    _common(fm, steps=3000, batch_size=48, lr=1e-4, save_every=100, guidance=3.0, why="the teacher's CFG scale")
    fm.add_argument("--out", default="runs/shapes-flux-flowmap", help="run folder (default runs/shapes-flux-flowmap)")
    fm.add_argument(
        "--rollout-fraction", type=float, default=0.0,
        help="share of rows whose input is the student's own jump from noise, not noised data (default 0)",
    )  # fmt: skip
    fm.set_defaults(func=cmd_distill_flowmap)
    add_self_forcing_command(what)
    return p
