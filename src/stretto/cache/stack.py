"""What a cache policy works with: `Stack`, which runs ranges of blocks on some rows, and `Call`, one model call.

`Stack` runs a range of blocks on all or some batch rows (and, for token-level policies, on a subset of
the image tokens: `compute_tokens`) and counts each block evaluation as computed, reused or forecast.
`Call` carries the step's sigma per row (set explicitly with `step(...)`, else taken from the model
call's `timestep` argument), its step index (by sigma from the schedule given to `reset`, else as the
caller said, else counted per branch; see step_context.py), whether it is the final step, and the
policy's state for these rows (kept per CFG branch, see branch_state.py). Decisions are per row (a policy
returns a boolean per row; rows that compute are gathered into a smaller batch, the others reuse or
forecast).

How each block is called (its carried tensors and its other arguments, per block list) is `BlockCalls`
(block_calls.py), following the model class's table entry (families.py). Tensor arguments with one entry
per batch row are split with the rows (also inside dict arguments such as attention kwargs), except
`SHARED_ARGS`; tuples of tensors only for the family's `row_args`; a `KVCache` argument becomes its view of
the rows (`KVCache.rows`). Long skips (HunyuanDiT) are taken from the blocks that produced them in the same
call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from stretto.cache.accounting import KINDS
from stretto.cache.block_calls import BlockCalls, Prepare
from stretto.cache.families import DUAL, token_level_classes
from stretto.cache.hidden import Hidden, add, put, split, sub, take
from stretto.models.kv_cache import KVCache

# block arguments that are shared by all batch rows even when their first dimension happens to equal the batch
SHARED_ARGS = frozenset({"image_rotary_emb", "rotary_emb", "joint_attention_kwargs", "cross_attention_kwargs"})
DUAL_STREAM = DUAL  # Flux / SD3 blocks return (encoder, image) tokens
# block arguments with one entry per token (text tokens, then image tokens) that compute_tokens slices
TOKEN_ARGS = frozenset({"image_rotary_emb"})
# per-token block arguments in layouts compute_tokens cannot slice (Wan's rotary table, self-attention masks)
UNSLICEABLE_ARGS = frozenset({"rotary_emb", "attention_mask"})


class Stack:
    """The block stack for one model call: runs ranges of blocks on all or some rows, and counts."""

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        calls: BlockCalls,
        batch: int,
        counts: torch.Tensor,
        fresh: torch.Tensor,
        model: str = "",
    ):
        self.blocks = blocks
        self.num_blocks = len(blocks)
        self.calls = calls
        self.carried = calls.carried
        self.extras = calls.arguments(0)  # the first block's other arguments (TeaCache reads its `temb`)
        self.batch = batch
        self._counts = counts  # (batch, 3) tensor: block evaluations per row and kind
        self.fresh = fresh  # (batch,) bool: rows without stored state, which must compute
        self.model = model or type(blocks[0]).__name__  # for error messages
        family = calls.family
        self._skip_from = family.skip_from
        self._skips: dict[int, tuple[torch.Tensor | None, torch.Tensor]] = {}  # block -> (rows, output) this call
        n = len(blocks)
        self._skip_sources = {family.skip_from(j, n) for j in range(n)} if family.skip_from else set()
        self._row_args = frozenset(family.row_args)

    def compute(self, h: Hidden, start: int, stop: int, rows: torch.Tensor | None = None) -> Hidden:
        """Run blocks [start, stop) on `h`; with `rows`, `h` holds just those batch rows."""
        h = self._run_blocks(h, start, stop, self._row_prepare(rows), rows)
        self.count("computed", start, stop, rows)
        return h

    def compute_tokens(
        self,
        h: Hidden,
        start: int,
        stop: int,
        tokens: torch.Tensor,
        rows: torch.Tensor | None = None,
        kv: list | None = None,
    ) -> Hidden:
        """Run blocks [start, stop) on the image tokens `tokens` of `h` only; return the blocks' output, whose
        image-token tensor holds just those tokens (in the order of `tokens`). With `rows`, `h` holds those rows.

        `tokens` are distinct indices into the image tokens (dim 1 of `hidden_states`). The text tokens of
        dual-stream blocks (Flux, SD3) always go along, and per-token block arguments (Flux's
        `image_rotary_emb`, one row per text then image token) are sliced to match. One subset serves all rows
        of the call, because diffusers' rotary tables are shared across the batch. It counts as a fractional
        evaluation: k of N image tokens over n blocks are n*k/N computed and n*(N-k)/N reused (the attention
        itself, which then covers all keys, is not discounted). With every token selected this is `compute`
        (the same output, bit for bit).

        Without `kv` the selected tokens attend only to each other and the text tokens. With `kv` (a list,
        keys then values per self-attention module of blocks [start, stop), for the rows `h` holds) they attend to
        the keys and values of all tokens (see stretto.cache.token_attention): with every token selected the
        blocks' keys and values are recorded into `kv`; otherwise the selected tokens' fresh keys and
        values overwrite their slots in `kv` (which is updated in place) and the others come from it."""
        if not self.calls.family.token_level:
            raise ValueError(
                f"token-level cache policies support {', '.join(token_level_classes())}; {self.model} is not one"
            )
        image = self.carried.index("hidden_states") if "hidden_states" in self.carried else 0
        if h[image].ndim != 3:
            raise ValueError(
                f"token-level cache policies need (batch, tokens, channels) hidden states like Flux/SD3/DiT-style "
                f"blocks; {self.model} passes {tuple(h[image].shape)}"
            )
        n_image, k = h[image].shape[1], tokens.numel()
        text = h[0].shape[1] if self.carried == DUAL_STREAM and h[0] is not None else 0
        if k == 0 or k > n_image:
            raise ValueError(f"compute_tokens needs 1 to {n_image} distinct image tokens, got {k}")
        keep = torch.cat([torch.arange(text, device=tokens.device), text + tokens])  # rows of per-token tables
        for name, value in self.extras.items():  # fail before running anything
            self._token_arg(name, value, keep, text + n_image)
        if k == n_image:
            if kv is None:
                return self.compute(h, start, stop, rows)
            with self._attend_all(kv, start, stop, None, text):
                return self.compute(h, start, stop, rows)
        by_row = self._row_prepare(rows) or (lambda name, value: value)

        def prepare(name: str, value: Any) -> Any:
            return by_row(name, self._token_arg(name, value, keep, text + n_image))

        h = tuple(t.index_select(1, tokens) if i == image else t for i, t in enumerate(h))
        if kv is None:
            h = self._run_blocks(h, start, stop, prepare, rows)
        else:
            with self._attend_all(kv, start, stop, tokens, text):
                h = self._run_blocks(h, start, stop, prepare, rows)
        self.count("computed", start, stop, rows, fraction=k / n_image)
        self.count("reused", start, stop, rows, fraction=1 - k / n_image)
        return h

    def _attend_all(self, kv: list, start: int, stop: int, tokens: torch.Tensor | None, text: int):
        from stretto.cache.token_attention import all_token_attention  # imports diffusers' attention code

        return all_token_attention(self.blocks[start:stop], kv, tokens, text, self.model)

    def _row_prepare(self, rows: torch.Tensor | None) -> Prepare | None:
        if rows is None or rows.numel() == self.batch:
            return None  # every row: the arguments as they are
        return lambda name, value: self._take_arg(name, value, rows)

    def _token_arg(self, name: str, value: Any, keep: torch.Tensor, n_tokens: int) -> Any:
        """A block argument restricted to the kept tokens (`keep` indexes text then image tokens)."""
        if value is None:
            return None
        if name in UNSLICEABLE_ARGS or (name not in TOKEN_ARGS and "rotary" in name):
            raise ValueError(
                f"token-level cache policies support Flux/SD3/DiT-style blocks; {self.model} passes the per-token "
                f"block argument {name!r}, which they cannot restrict to a subset of image tokens"
            )
        if name not in TOKEN_ARGS:
            return value
        tables = value if isinstance(value, (tuple, list)) else (value,)
        if not all(isinstance(t, torch.Tensor) and t.ndim >= 1 and t.shape[0] == n_tokens for t in tables):
            shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in tables]
            raise ValueError(
                f"token-level cache policies expect {name} as tables with one row per token ({n_tokens} text + "
                f"image tokens) like diffusers Flux; {self.model} passed {shapes}"
            )
        sliced = tuple(t.index_select(0, keep.to(t.device)) for t in tables)
        return sliced if isinstance(value, (tuple, list)) else sliced[0]

    def _run_blocks(
        self, h: Hidden, start: int, stop: int, prepare: Prepare | None, rows: torch.Tensor | None
    ) -> Hidden:
        for i in range(start, stop):
            values = self.calls.prepared(self.calls.arguments(i), prepare)
            if self._skip_from is not None and (src := self._skip_from(i, self.num_blocks)) is not None:
                values = {**values, "skip": self._skip(i, src, rows)}  # already for these rows
            h = self.calls.call(i, self.blocks[i], h, values)
            if i in self._skip_sources:
                self._skips[i] = (None if rows is None or rows.numel() == self.batch else rows, self.main(h))
        return h

    def _skip(self, i: int, src: int, rows: torch.Tensor | None) -> torch.Tensor:
        """The long skip block i takes: block src's output in this call, for these rows."""
        rows_src, value = self._skips.get(src, (None, None))
        if value is not None:
            if rows_src is None or (rows is not None and torch.equal(rows_src, rows)):
                return value if rows is None or rows_src is not None else value.index_select(0, rows)
        raise ValueError(
            f"{self.model}'s block {i} takes the long skip of block {src}, which this call did not compute for "
            "the same rows; use a policy that runs or skips the whole stack (none, fora, taylor, teacache, "
            "magcache) or dbcache / firstblock with last=0"
        )

    def count(self, kind: str, start: int, stop: int, rows: torch.Tensor | None = None, fraction: float = 1.0) -> None:
        """Record that blocks [start, stop) were computed / reused / forecast for the rows (all if None);
        `fraction` counts a part of each block evaluation (e.g. the share of tokens computed)."""
        n = float(max(0, stop - start)) * fraction
        if rows is None:
            self._counts[:, KINDS.index(kind)] += n
        else:
            self._counts[rows, KINDS.index(kind)] += n

    def compute_or_reuse(
        self, h: Hidden, start: int, stop: int, compute: torch.Tensor, state: dict, key: str
    ) -> Hidden:
        """Rows where `compute` is true run blocks [start, stop) and store their residual under `state[key]`;
        the other rows add the stored residual instead. Computed rows get the blocks' exact output."""
        if state.get(key) is None:
            compute = torch.ones_like(compute)
        compute = compute | self.fresh
        run, skip = split(compute)
        if skip is None:
            out = self.compute(h, start, stop)
            state[key] = sub(out, h)
            return out
        if run is None:
            self.count("reused", start, stop)
            return add(h, state[key])
        h_run = take(h, run)
        out_run = self.compute(h_run, start, stop, rows=run)
        self.count("reused", start, stop, skip)
        state[key] = put(state[key], run, sub(out_run, h_run))
        return put(add(h, state[key]), run, out_run)

    def main(self, h: Hidden) -> torch.Tensor:
        """The image-token tensor of `h` (what residual-change signals are measured on)."""
        return h[self.carried.index("hidden_states")] if "hidden_states" in self.carried else h[0]

    def _take_arg(self, name: str, value: Any, rows: torch.Tensor) -> Any:
        if isinstance(value, dict):  # e.g. attention kwargs carrying a per-row mask (NucleusMoE)
            return {k: self._take_arg(k, v, rows) for k, v in value.items()}
        if name in self._row_args and isinstance(value, (tuple, list)):
            return type(value)(self._take_arg(name, v, rows) for v in value)
        if name in SHARED_ARGS and name not in self._row_args:
            return value
        if isinstance(value, KVCache):  # a block that attends over stretto's KV cache (WorldDiT): those rows' view
            return value.rows(rows)
        if not isinstance(value, torch.Tensor) or value.ndim == 0:
            return value
        return value.index_select(0, rows) if value.shape[0] == self.batch else value


@dataclass
class Call:
    """One model call as a policy sees it; `state` is the policy's per-row state for these rows (mutable)."""

    sigma: torch.Tensor  # (B,) noise level of each row
    index: torch.Tensor  # (B,) step index of each row (see step_context.step_index)
    final: torch.Tensor  # (B,) bool: the final step (all False when neither a schedule nor the caller says)
    fresh: torch.Tensor  # (B,) bool: rows with no stored state yet (their entries in `state` are zeros)
    state: dict[str, Any]
