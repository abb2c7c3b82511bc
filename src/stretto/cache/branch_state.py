"""Policy state kept per CFG branch, so running the branches batched or as separate calls decides the same.

A batched CFG call is split into equal row chunks, one per branch ("cond", "uncond", ...). The state a
policy leaves in `call.state` is stored under the group of branches the call ran; a later call gathers
its rows' state from whatever groups hold its branches (a batched call may follow separate ones and the
other way round). A branch never seen, or seen with another number of rows, has no state: its rows are
zero-filled and marked fresh, so the policy computes them.

State values are tensors with the batch in dim 0, or (nested) tuples of them (e.g. Taylor factors).
"""

from __future__ import annotations

from typing import Any

import torch


class BranchStates:
    """The policy state of every branch seen since the last reset, grouped by the call that stored it."""

    def __init__(self) -> None:
        self.groups: dict[tuple[str, ...], tuple[int, dict]] = {}  # branch group -> (rows per branch, state)

    def gather(self, branches: tuple[str, ...], chunk: int) -> tuple[dict, list[bool]]:
        """The state of these rows, and per branch whether it has none yet (its rows are zero-filled)."""
        if branches in self.groups and self.groups[branches][0] == chunk:
            return self.groups[branches][1], [False] * len(branches)
        pieces = []
        for b in branches:
            group = next((g for g in self.groups if b in g), None)
            if group is None or self.groups[group][0] != chunk:  # never seen, or its batch size changed
                pieces.append(None)
                continue
            i, old = group.index(b), self.groups[group][1]
            pieces.append({k: _rows_of(v, i * chunk, (i + 1) * chunk) for k, v in old.items()})
        present = [p for p in pieces if p]
        if not present:
            return {}, [True] * len(branches)
        keys = set.intersection(*(set(p) for p in present))
        fresh = [p is None or not keys <= set(p) for p in pieces]
        template = present[0]
        filled = [{k: _zeros_like(template[k]) for k in keys} if f else p for p, f in zip(pieces, fresh, strict=True)]
        merged = {k: _cat_rows([p[k] for p in filled]) for k in keys}
        return {k: v for k, v in merged.items() if v is not None}, fresh

    def store(self, branches: tuple[str, ...], state: dict, chunk: int) -> None:
        """Keep `state` (chunk rows per branch) for these branches; other groups keep only their other branches."""
        for group in [g for g in self.groups if set(g) & set(branches)]:
            n, old = self.groups.pop(group)
            kept = tuple(b for b in group if b not in branches)
            if kept:
                idx = [group.index(b) for b in kept]
                self.groups[kept] = (
                    n,
                    {k: _cat_rows([_rows_of(v, i * n, (i + 1) * n) for i in idx]) for k, v in old.items()},
                )
        self.groups[branches] = (chunk, state)


# state values are tensors or nested tuples / lists of them; None passes through
def _rows_of(value: Any, start: int, stop: int) -> Any:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value[start:stop]
    return tuple(_rows_of(v, start, stop) for v in value)


def _zeros_like(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return torch.zeros_like(value)
    return tuple(_zeros_like(v) for v in value)


def _cat_rows(values: list[Any]) -> Any:
    if any(v is None for v in values):
        return None
    if all(isinstance(v, torch.Tensor) for v in values):
        return torch.cat(values)
    if len({len(v) for v in values}) != 1:
        return None
    return tuple(_cat_rows(list(parts)) for parts in zip(*values, strict=True))
