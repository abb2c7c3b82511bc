"""RAS: "Region-Adaptive Sampling for Diffusion Transformers" (Liu et al., 2025).

The model's focus (where its output changes) is stable between steps, so after `warmup` full steps
each step runs only the tokens in focus through the stack and reuses the cached residual elsewhere.
In focus are the `ratio` fraction of image tokens whose stack residual (output - input of the whole
block stack, not the model's final output) changed most between the last two steps on which they were
computed (L2 norm over channels, per step), plus every token not refreshed for `max_age` steps (the
starvation guard); ties, e.g. before any change is measured, go to the oldest tokens. Every `full_every`
steps after the warm-up, and on the schedule's final step, every token is recomputed (the paper's error
reset).

What is cached, per row: the stack residual of every image token, and, as in the paper, for every block's
self-attention the keys and values of every image token (after the q/k norms and the rotary embedding;
`kv` in the state). The tokens in focus compute fresh keys and values, which replace theirs in the cache,
and attend to the keys and values of all tokens (see stretto.cache.token_attention); without them they
would see only each other and their outputs would be further off than the residual they replace. On
shapes-flux (50 Euler steps, PSNR against no cache) the defaults (ratio 0.25, full_every 4) give 49.4 dB
at 50% of the block evaluations; without the error reset (full_every 0) the same ratio gives 39.5 dB at
42%, and ratio 0.1 with full_every 4, 47.3 dB at 40%.

How this differs from the paper: RAS scores tokens by the norm (or std) of the previous step's predicted
noise, raises the priority of tokens dropped many times, and reuses the noise of cached tokens at the
sampler. Here the mechanism hooks the whole block stack: the residual change is the score, starved tokens
are added outright, and the stack's residual (not the sampler's noise) is reused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stretto.cache.hidden import Hidden
from stretto.cache.policy import CachePolicy, bounded, register
from stretto.cache.stack import Call, Stack
from stretto.cache.toca import full_steps, refresh_tokens


@register
@dataclass
class RAS(CachePolicy):
    """After `warmup` full steps, refresh only the image tokens whose residual changes most; reuse the rest."""

    name = "ras"
    ratio: float = bounded(0.25, 0.0, 1.0, "fraction of image tokens in focus (refreshed) per step")
    warmup: int = bounded(4, 0, 1000, "full steps at the start")
    max_age: int = bounded(5, 0, 1000, "also refresh tokens not refreshed for this many steps (0: never)")
    full_every: int = bounded(4, 0, 1000, "recompute every token every N-th step after the warm-up (0: never)")
    final: bool = bounded(True, 0, 1, "always compute every token on the schedule's final step")

    def run(self, stack: Stack, h: Hidden, call: Call) -> Hidden:
        full = full_steps(call, self.warmup, self.full_every, self.final)
        return refresh_tokens(stack, h, call, full, self._pick)

    def _pick(self, state: dict, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        age = (index[:, None] - state["refreshed"][rows]).float()
        change = state["change"][rows]
        change = change / change.mean(1, keepdim=True).clamp(min=1e-12)
        score = (change + 1e-3 * age / (age.max() + 1)).mean(0)  # the age term only breaks ties
        focus = torch.zeros_like(score, dtype=torch.bool)
        focus[score.topk(round(self.ratio * score.numel())).indices] = True
        if self.max_age:
            focus |= (age >= self.max_age).any(0)
        return focus.nonzero().flatten()
