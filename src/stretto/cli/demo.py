"""`stretto demo`: the main job, a grid from the shipped model and a full-compute vs fast table."""

from __future__ import annotations

import argparse

from stretto.cli import args as shared


def cmd_demo(args: argparse.Namespace) -> None:
    from stretto.checkpoints import check_kind
    from stretto.demo import run_demo
    from stretto.models.shapes_flux import ShapesFlux

    check_kind(args.model, ShapesFlux.kind)
    run_demo(model=args.model, device=args.device, out=args.out)


def add_demo_command(subparsers) -> argparse.ArgumentParser:
    """`stretto demo`."""
    p = subparsers.add_parser("demo", help="the main job: a grid from the shipped model + full vs fast table")
    p.add_argument("--out", default="stretto-demo.png", help="grid PNG of the fast setting (default stretto-demo.png)")
    shared.add_model(p)
    shared.add_device(p)
    p.set_defaults(func=cmd_demo)
    return p
