"""Watching a world stream live: a terminal view in 24-bit colour, and actions read from the keyboard."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import torch

from stretto.data.shapes import to_uint8
from stretto.data.world import ACTIONS, parse_actions

KEYS = {"w": "U", "a": "L", "s": "D", "d": "R", " ": "N", "\x1b[A": "U", "\x1b[B": "D", "\x1b[C": "R", "\x1b[D": "L"}


def terminal_view() -> Callable[[torch.Tensor, str], None]:
    """Draw frames in place in the terminal: two pixel rows per text row with the upper-half block."""
    drawn = [0]

    def show(frame: torch.Tensor, caption: str) -> None:
        px = to_uint8(frame[None])[0]
        lines = []
        for y in range(0, px.shape[0] - 1, 2):
            cells = (
                f"\x1b[38;2;{t[0]};{t[1]};{t[2]}m\x1b[48;2;{b[0]};{b[1]};{b[2]}m\u2580"
                for t, b in zip(px[y], px[y + 1], strict=True)
            )
            lines.append("".join(cells) + "\x1b[0m")
        out = ("\x1b[F" * drawn[0]) + "\n".join(lines) + f"\n{caption}\x1b[K\n"
        sys.stdout.write(out)
        sys.stdout.flush()
        drawn[0] = len(lines) + 1

    return show


def keyboard_actions(stream=None) -> Iterator[int]:
    """Actions from the keyboard: arrows or WASD move, space or N stays, q quits.

    On a terminal, keys act at once (cbreak mode); otherwise lines of action symbols are read ("RRUL").
    """
    stream = stream or sys.stdin
    print(f"keys: arrows/WASD move, space stays, q quits (actions {ACTIONS})", file=sys.stderr)
    if not stream.isatty():
        for line in stream:
            if line.strip().lower() == "q":
                return
            yield from parse_actions(line.strip())
        return
    import termios
    import tty

    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        while True:
            key = stream.read(1)
            if key == "\x1b":
                key += stream.read(2)
            if key.lower() == "q" or key == "":
                return
            symbol = KEYS.get(key.lower() if len(key) == 1 else key, key.upper())
            if symbol in ACTIONS:
                yield ACTIONS.index(symbol)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
