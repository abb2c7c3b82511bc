"""Images as the wire carries them: PNG bytes (base64 in JSON) or raw RGB bytes."""

from __future__ import annotations

import base64
import io

import torch
from PIL import Image

from stretto.data.shapes import to_uint8


def png_bytes(images: torch.Tensor) -> list[bytes]:
    """(N, 3, H, W) in [-1, 1] -> one PNG per image."""
    out = []
    for pixels in to_uint8(images):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def png_b64(images: torch.Tensor) -> list[str]:
    """(N, 3, H, W) in [-1, 1] -> one base64 PNG per image (OpenAI's `b64_json`)."""
    return [base64.b64encode(png).decode() for png in png_bytes(images)]


def raw_rgb(image: torch.Tensor) -> bytes:
    """(1, 3, H, W) in [-1, 1] -> H*W*3 bytes, row-major RGB."""
    return to_uint8(image)[0].tobytes()
