"""The `stretto` command: one module per command group, assembled here behind the one error boundary.

Bad input ends with a one-line `stretto: error: ...` and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

USAGE_ERROR = 2
INTERRUPTED = 130  # the exit code shells expect after Ctrl-C


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: every command group adds its own subcommands."""
    from stretto.cli.bench import add_bench_commands
    from stretto.cli.demo import add_demo_command
    from stretto.cli.distill import add_distill_commands
    from stretto.cli.image import add_generate_command
    from stretto.cli.serve import add_serve_command
    from stretto.cli.text import add_text_command
    from stretto.cli.train import add_train_commands
    from stretto.cli.tune import add_calibrate_commands, add_search_commands
    from stretto.cli.world import add_stream_command

    parser = argparse.ArgumentParser(prog="stretto", description="Make diffusion models generate fast.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_generate_command(sub)
    add_demo_command(sub)
    add_train_commands(sub)
    add_distill_commands(sub)
    add_bench_commands(sub)
    add_text_command(sub)
    add_stream_command(sub)
    add_calibrate_commands(sub)
    add_search_commands(sub)
    add_serve_command(sub)
    return parser


def _error(message: str) -> int:
    print(f"stretto: error: {message}".replace("\n", " "), file=sys.stderr)
    return USAGE_ERROR


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (0, 2 for bad input, 130 when interrupted)."""
    try:
        args = build_parser().parse_args(argv)  # range-checked flags raise ValueError here
        if hasattr(args, "device"):
            from stretto.devices import resolve_device

            args.device = resolve_device(args.device)
        return args.func(args) or 0
    except (ValueError, FloatingPointError) as err:
        # Our boundary errors (bad prompt, setting, checkpoint, device, non-finite sample) all land here.
        return _error(str(err))
    except OSError as err:
        # Unreadable inputs and unwritable outputs (a read-only folder, a file where a folder should be).
        where = f"{err.filename}: " if err.filename else ""
        return _error(f"{where}{err.strerror or err}")
    except KeyboardInterrupt:
        print("stretto: interrupted", file=sys.stderr)
        return INTERRUPTED
