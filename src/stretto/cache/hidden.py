"""The hidden states a block hands to the next, as a tuple, and the row arithmetic policies do on them.

A `Hidden` holds one tensor per carried block argument, in the block's output order (Flux / SD3:
(encoder, image) tokens; DiT, Wan: the image tokens alone). Entries may be None (a block that carries no
text tokens); every operation here passes None through.
"""

from __future__ import annotations

import torch

Hidden = tuple[torch.Tensor | None, ...]  # the tensors a block passes to the next, in the block's output order


def take(h: Hidden, rows: torch.Tensor) -> Hidden:
    """The given batch rows of every tensor."""
    return tuple(None if t is None else t.index_select(0, rows) for t in h)


def put(h: Hidden, rows: torch.Tensor, values: Hidden) -> Hidden:
    """A copy of `h` with the given batch rows replaced by `values`."""
    return tuple(None if t is None else t.index_copy(0, rows, v) for t, v in zip(h, values, strict=True))


def add(a: Hidden, b: Hidden) -> Hidden:
    """Elementwise a + b (None where either is None)."""
    return tuple(None if x is None or y is None else x + y for x, y in zip(a, b, strict=True))


def sub(a: Hidden, b: Hidden) -> Hidden:
    """Elementwise a - b (None where either is None)."""
    return tuple(None if x is None or y is None else x - y for x, y in zip(a, b, strict=True))


def per_row(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a (B,) tensor to broadcast over the rows of `like`."""
    return v.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def split(mask: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Row indices where `mask` is true and where it is false (None when there are none). Syncs with the device."""
    run = mask.nonzero().flatten()
    if run.numel() == mask.numel():
        return run, None
    if run.numel() == 0:
        return None, (~mask).nonzero().flatten()
    return run, (~mask).nonzero().flatten()
