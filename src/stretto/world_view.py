"""Showing a world stream: GIFs, a terminal view in 24-bit colour, and actions read from the keyboard."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stretto.data.world import ACTIONS, parse_actions

KEYS = {"w": "U", "a": "L", "s": "D", "d": "R", " ": "N", "\x1b[A": "U", "\x1b[B": "D", "\x1b[C": "R", "\x1b[D": "L"}


def to_uint8(frame: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [-1, 1] -> (H, W, C) uint8."""
    return ((frame.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def save_gif(panels: list[torch.Tensor], path: str | Path, fps: float = 12.0, scale: int = 4) -> Path:
    """Frames (N, C, H, W) of each panel side by side, as an endlessly looping GIF."""
    if scale < 1 or fps <= 0:
        raise ValueError(f"GIF scale must be >= 1 and fps > 0, got scale {scale}, fps {fps}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gap = np.full((panels[0].shape[2], 2, 3), 255, dtype=np.uint8)
    images = []
    for i in range(panels[0].shape[0]):
        row = np.concatenate([x for p in panels for x in (to_uint8(p[i]), gap)][:-1], axis=1)
        img = Image.fromarray(row)
        images.append(img.resize((img.width * scale, img.height * scale), Image.NEAREST))
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return path


def terminal_view() -> Callable[[torch.Tensor, str], None]:
    """Draw frames in place in the terminal: two pixel rows per text row with the upper-half block."""
    drawn = [0]

    def show(frame: torch.Tensor, caption: str) -> None:
        px = to_uint8(frame)
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
