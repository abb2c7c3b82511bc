"""Writing generated images: single PNGs, labelled prompt x seed grids, and GIFs of frame streams."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from stretto.data.shapes import to_uint8


def image_grid(
    images: torch.Tensor,
    rows: int,
    cols: int,
    scale: int = 3,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    pad: int = 2,
) -> Image.Image:
    """Lay out (rows * cols, 3, H, W) images in [-1, 1] row-major, upscaled by `scale`, with optional labels."""
    if images.shape[0] != rows * cols:
        raise ValueError(f"image_grid needs rows * cols = {rows * cols} images, got {images.shape[0]}")
    pixels = to_uint8(images)
    h, w = pixels.shape[1] * scale, pixels.shape[2] * scale
    label_w = 8 + 6 * max((len(s) for s in row_labels), default=0) if row_labels else 0
    label_h = 14 if col_labels else 0
    canvas = Image.new("RGB", (label_w + cols * (w + pad) + pad, label_h + rows * (h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c, text in enumerate(col_labels or []):
        draw.text((label_w + pad + c * (w + pad), 2), text, fill=(0, 0, 0))
    for r in range(rows):
        y = label_h + pad + r * (h + pad)
        if row_labels:
            draw.text((4, y + h // 2 - 5), row_labels[r], fill=(0, 0, 0))
        for c in range(cols):
            tile = Image.fromarray(pixels[r * cols + c]).resize((w, h), Image.Resampling.NEAREST)
            canvas.paste(tile, (label_w + pad + c * (w + pad), y))
    return canvas


def save_images(
    images: torch.Tensor,
    path: str | Path,
    rows: int = 1,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
) -> Path:
    """One image -> a PNG at native size x4; several -> a grid with `rows` rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if images.shape[0] == 1 and not row_labels:
        image_grid(images, 1, 1, scale=4, pad=0).save(path)
    else:
        image_grid(images, rows, images.shape[0] // rows, row_labels=row_labels, col_labels=col_labels).save(path)
    return path


def save_gif(panels: list[torch.Tensor], path: str | Path, fps: float = 12.0, scale: int = 4) -> Path:
    """Frames (N, C, H, W) of each panel side by side, as an endlessly looping GIF."""
    if scale < 1 or fps <= 0:
        raise ValueError(f"GIF scale must be >= 1 and fps > 0, got scale {scale}, fps {fps}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gap = np.full((panels[0].shape[2], 2, 3), 255, dtype=np.uint8)
    images = []
    for i in range(panels[0].shape[0]):
        row = np.concatenate([x for p in panels for x in (to_uint8(p[i : i + 1])[0], gap)][:-1], axis=1)
        img = Image.fromarray(row)
        images.append(img.resize((img.width * scale, img.height * scale), Image.NEAREST))
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return path
