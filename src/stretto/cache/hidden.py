"""The hidden states a block hands to the next, as a tuple, and the row arithmetic policies do on them.

A `Hidden` holds one tensor per carried block argument, in the block's output order (Flux / SD3:
(encoder, image) tokens; DiT, Wan: the image tokens alone). Entries may be None (a block that carries no
text tokens); every operation here passes None through.
"""

from __future__ import annotations

import torch

Hidden = tuple[torch.Tensor | None, ...]  # the tensors a block passes to the next, in the block's output order


def take(h: Hidden, rows: torch.Tensor) -> Hidden:
    """The given batch rows of every tensor (`rows`: distinct ascending indices, as `split` gives them)."""
    return tuple(None if t is None else take_rows(t, rows) for t in h)


def put(h: Hidden, rows: torch.Tensor, values: Hidden) -> Hidden:
    """`h` with the given batch rows replaced by `values` (a new tuple; the tensors of `h` are not modified)."""
    return tuple(None if t is None else put_rows(t, rows, v) for t, v in zip(h, values, strict=True))


# With every row selected (the usual batched-CFG call, all rows at one step) these return their input
# instead of copying it: the copies cost as much as a block's attention on a small model.
def take_rows(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows `rows` (distinct, ascending) of `t`; `t` itself when that is every row."""
    return t if rows.numel() == t.shape[0] else t.index_select(0, rows)


def put_rows(t: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """`t` with rows `rows` (distinct, ascending) replaced by `values` (a copy); `values` when that is every row."""
    return values if rows.numel() == t.shape[0] else t.index_copy(0, rows, values)


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
