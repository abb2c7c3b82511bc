"""ToCa: "Accelerating Diffusion Transformers with Token-wise Feature Caching" (Zou et al., ICLR 2025).

Every `interval` steps (after `warmup` full steps, and on the schedule's final step) the whole stack runs
and its residual (output - input) is stored for every image token. On the steps in between only a `ratio`
fraction of the image tokens is run through the stack; the others add their cached residual, and the
refreshed tokens' residuals are updated. A token's score is its cache age (steps since it was last
refreshed, over `interval`) plus how fast its residual moved when last refreshed (the L2 norm of the change
per step, over the row's mean); so that the refreshed tokens spread over the image, the best token of every
2x2 window of the token grid is taken first, then the best of the rest. One subset serves all rows of a
call (see `Stack.compute_tokens`): batched CFG refreshes the same tokens in both branches, so it is not
bit-equal to calling the branches separately. `full_steps` and `refresh_tokens` are shared with RAS.

What is cached, per row: the stack residual of every image token, and for every block's self-attention the
keys and values of every image token (after the q/k norms and the rotary embedding; `kv` in the state).
The refreshed tokens compute fresh keys and values, which replace theirs in the cache, and their queries
attend to the keys and values of all tokens (see stretto.cache.token_attention), as in the paper, where
the chosen tokens keep their full attention. Without the cached keys and values a refreshed token would
see only the other refreshed tokens, and its output would be further off (3-30% on shapes-flux) than the
residual it replaces. On shapes-flux (50 Euler steps) the defaults (interval 3, ratio 0.1) give 51.0 dB PSNR
against no cache at 44% of the block evaluations; reusing the residual of every token (ratio 0) gives
50.4 dB at 38%, and FORA with interval 3, 48.7 dB at 36% (the attention of a partial step covers all keys
and is not discounted in that count).

How this differs from the paper: ToCa caches per layer and per module (attention, MLP) with ratios that
vary by layer, and scores tokens by the attention they receive and the entropy of their cross-attention.
Here the mechanism hooks the whole block stack: one token subset runs through every block, attention maps
are not read (fused attention never materialises them), and the cache-age and residual-change scores
stand in for them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from stretto.cache.hidden import Hidden, add, put, put_rows, split, sub, take, take_rows
from stretto.cache.policy import CachePolicy, bounded, register
from stretto.cache.stack import Call, Stack

Pick = Callable[[dict, torch.Tensor, torch.Tensor], torch.Tensor]  # (state, rows, their step index) -> tokens


@register
@dataclass
class ToCa(CachePolicy):
    """Compute the stack every `interval` steps; in between refresh a `ratio` of image tokens, reuse the rest."""

    name = "toca"
    interval: int = bounded(3, 1, 1000, "compute every token every N-th step")
    ratio: float = bounded(0.1, 0.0, 1.0, "fraction of image tokens refreshed on the steps in between")
    warmup: int = bounded(2, 0, 1000, "full steps at the start")
    final: bool = bounded(True, 0, 1, "always compute every token on the schedule's final step")

    def run(self, stack: Stack, h: Hidden, call: Call) -> Hidden:
        full = full_steps(call, self.warmup, self.interval, self.final)
        return refresh_tokens(stack, h, call, full, self._pick)

    def _pick(self, state: dict, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        age = (index[:, None] - state["refreshed"][rows]).float()
        change = state["change"][rows]
        score = (age / self.interval + change / change.mean(1, keepdim=True).clamp(min=1e-12)).mean(0)
        winners = window_winners(score)
        bonus = score.max() - score.min() + 1  # every window's best ranks above all other tokens
        score = score.index_add(0, winners, bonus.expand(winners.numel()))
        return score.topk(round(self.ratio * score.numel())).indices.sort().values


def window_winners(score: torch.Tensor, size: int = 2) -> torch.Tensor:
    """The index of the best token in each `size` x `size` window of the square token grid (runs of
    size**2 tokens when the count is not a square); ties go to the lowest index."""
    n = score.numel()
    i = torch.arange(n, device=score.device)
    g = round(n**0.5)
    if g * g == n:
        window = (i // g // size) * -(-g // size) + (i % g) // size
    else:
        window = i // size**2
    n_windows = int(window.max()) + 1
    best = torch.full((n_windows,), -torch.inf, dtype=score.dtype, device=score.device)
    best = best.scatter_reduce(0, window, score, "amax")
    candidate = torch.where(score == best[window], i, n)
    return torch.full((n_windows,), n, device=score.device).scatter_reduce(0, window, candidate, "amin")


def full_steps(call: Call, warmup: int, every: int, final: bool) -> torch.Tensor:
    """Per row of the call, whether every image token is recomputed: during the first `warmup` steps, every
    `every`-th step after them (0: never), and, if `final`, on the schedule's final step."""
    since = call.index - warmup
    full = since < 0
    if every:
        full |= since % every == 0
    if final:
        full |= call.final
    return full


def refresh_tokens(stack: Stack, h: Hidden, call: Call, full: torch.Tensor, pick: Pick) -> Hidden:
    """One step of a token-level cache (ToCa, RAS): rows where `full` is true (or fresh, or before any
    state) run every image token; the other rows run the tokens `pick` chooses for them (one subset for
    all of them) and add the cached residual on the rest. Updates, per row and image token, the cached
    residual, the step it was last refreshed and the L2 norm of its residual change per step, and per row
    and self-attention module the image tokens' attention keys and values ("kv"): the refreshed tokens
    attend to the cached keys and values of the others, so they see the whole image."""
    state, n_blocks = call.state, stack.num_blocks
    every = torch.arange(stack.main(h).shape[1], device=stack.main(h).device)
    if "residual" not in state:
        kv: list = []
        out = stack.compute_tokens(h, 0, n_blocks, every, kv=kv)
        state["kv"] = tuple(kv)
        state["residual"] = sub(out, h)
        state["refreshed"] = call.index[:, None].expand(-1, every.numel()).clone()
        state["change"] = torch.zeros(state["refreshed"].shape, device=every.device)
        state["computed"] = torch.ones_like(call.index)
        return out
    run, part = split(full | call.fresh)
    out = h if part is None else add(h, state["residual"])  # reuse; computed rows and tokens are overwritten
    if run is not None:
        h_run = take(h, run)
        kv = []
        out_run = stack.compute_tokens(h_run, 0, n_blocks, every, rows=run, kv=kv)
        state["kv"] = tuple(put_rows(c, run, n) for c, n in zip(state["kv"], kv, strict=True))
        _remember(stack, state, h_run, out_run, run, every, call.index[run])
        out = put(out, run, out_run)
    if part is None:
        return out
    tokens = pick(state, part, call.index[part])
    if tokens.numel() == 0:
        stack.count("reused", 0, n_blocks, part)
        return out
    h_part = take(h, part)
    kv = [take_rows(c, part) for c in state["kv"]]  # updated in place by the attention (token_attention.py)
    out_part = stack.compute_tokens(h_part, 0, n_blocks, tokens, rows=part, kv=kv)
    state["kv"] = tuple(put_rows(c, part, n) for c, n in zip(state["kv"], kv, strict=True))
    image = _image(stack)
    reused = take_rows(out[image], part)
    _remember(stack, state, h_part, out_part, part, tokens, call.index[part])
    merged = tuple(reused.index_copy(1, tokens, t) if i == image else t for i, t in enumerate(out_part))
    return put(out, part, merged)


def _image(stack: Stack) -> int:
    return stack.carried.index("hidden_states") if "hidden_states" in stack.carried else 0


def _remember(
    stack: Stack, state: dict, h: Hidden, out: Hidden, rows: torch.Tensor, tokens: torch.Tensor, index: torch.Tensor
) -> None:
    """Store the new residual of `tokens` (all of the other streams) for `rows`, with its change per step."""
    image = _image(stack)
    at = (rows[:, None], tokens[None, :])
    new = sub(out, tuple(t.index_select(1, tokens) if i == image else t for i, t in enumerate(h)))
    old = state["residual"][image][at]
    gap = (index[:, None] - state["refreshed"][at]).clamp(min=1).to(old.dtype)
    change = (new[image] - old).flatten(2).norm(dim=-1) / gap
    change = torch.where(state["computed"][rows, None] > 0, change, torch.zeros_like(change))
    state["residual"] = tuple(
        None if r is None or n is None else r.index_put(at, n) if i == image else put_rows(r, rows, n)
        for i, (r, n) in enumerate(zip(state["residual"], new, strict=True))
    )
    state["refreshed"] = state["refreshed"].index_put(at, index[:, None].expand(-1, tokens.numel()))
    state["change"] = state["change"].index_put(at, change.to(state["change"].dtype))
    state["computed"] = state["computed"].index_put((rows,), state["computed"][rows] + 1)
