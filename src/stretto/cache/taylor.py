"""TaylorSeer: "From Reusing to Forecasting: Accelerating Diffusion Models with TaylorSeers" (Liu et al., 2025).

On full steps the stack's residual (output - input) F is stored with its finite differences up to
`order`, each divided by the sigma gap between the two computed steps it comes from; on the steps in
between the residual is forecast as F(s) = sum_i D^i F / i! * (s - s_last)^i and added to the input.
The paper forecasts every layer's attention and MLP outputs and uses the step index as the variable;
here one forecast covers the whole stack and the variable is sigma (the mechanism passes it explicitly).
`first=N` runs the first N blocks on every step and forecasts only the rest's residual, added to their fresh
output (cache-dit's "DBCache Fn + TaylorSeer" with a fixed step mask): the forecast then starts from a state
that has seen this step's input, for the price of N blocks per step. `final=true` also computes the schedule's
last step, as cache-dit's step masks and FORA do.

`taylor_update` and `taylor_forecast` keep and evaluate one such series in a policy's per-row state;
the Taylor policy and the confidence-gated Taylor policy (gated_taylor.py) both use them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from stretto.cache.hidden import Hidden, add, per_row, put, split, sub, take
from stretto.cache.policy import CachePolicy, bounded, register
from stretto.cache.stack import Call, Stack


def taylor_forecast(state: dict, sigma: torch.Tensor, key: str = "") -> Hidden:
    """The series stored under `key` in `state`, evaluated at each row's sigma: sum_i D^i F / i! * (s - s_last)^i."""
    dt = sigma - state[f"{key}sigma"]
    factors = state[f"{key}factors"]
    total = factors[0]
    for i, d in enumerate(factors[1:], start=1):
        total = tuple(
            None if t is None else t + x * per_row(dt**i / math.factorial(i), x) for t, x in zip(total, d, strict=True)
        )
    return total


def taylor_update(
    state: dict, feature: Hidden, sigma: torch.Tensor, rows: torch.Tensor | None, order: int, key: str = ""
) -> None:
    """Add a computed value of the series stored under `key`: new finite differences up to `order` for the
    rows (all when None; then `feature` holds all rows, else just those). A difference needs as many
    earlier computed steps as its order; a recomputation at the same sigma keeps the old differences."""
    k_factors, k_sigma, k_computed = f"{key}factors", f"{key}sigma", f"{key}computed"
    old = state.get(k_factors)
    if rows is not None:
        old_rows = [take(d, rows) for d in old]
        s_old, n_old = state[k_sigma][rows], state[k_computed][rows]
        s_new = sigma[rows]
    else:
        old_rows, s_old, n_old, s_new = old, state.get(k_sigma), state.get(k_computed), sigma
    new = [feature]
    if old_rows is not None:
        gap = s_new - s_old
        same = gap == 0  # recomputed at the same sigma (e.g. a 2-stage sampler): keep the old differences
        gap = torch.where(same, torch.ones_like(gap), gap)
        for i in range(order):
            weight = (n_old > i).to(gap.dtype) / gap
            new.append(
                tuple(
                    None if a is None else torch.where(per_row(same, a).bool(), c, (a - b) * per_row(weight, a))
                    for a, b, c in zip(new[i], old_rows[i], old_rows[i + 1], strict=True)
                )
            )
        n_new = torch.where(same, n_old, n_old + 1)
    else:
        zero = tuple(None if t is None else torch.zeros_like(t) for t in feature)
        new += [zero] * order
        n_new = torch.ones_like(sigma, dtype=torch.long)
    if rows is None:
        state[k_factors], state[k_sigma], state[k_computed] = new, sigma, n_new
    else:
        state[k_factors] = [put(o, rows, d) for o, d in zip(old, new, strict=True)]
        state[k_sigma] = state[k_sigma].index_copy(0, rows, s_new)
        state[k_computed] = state[k_computed].index_copy(0, rows, n_new)


@register
@dataclass
class Taylor(CachePolicy):
    """Compute the stack every `interval` steps after `warmup`; forecast its residual by a Taylor series between."""

    name = "taylor"
    step_only = True
    order: int = bounded(2, 1, 3, "highest finite difference used")
    interval: int = bounded(4, 1, 1000, "compute every N-th step")
    warmup: int = bounded(2, 0, 1000, "full steps at the start")
    first: int = bounded(0, 0, 10_000, "blocks computed on every step; the series forecasts the rest")
    final: bool = bounded(False, 0, 1, "also compute the schedule's final step (cache-dit's step masks do)")

    def check_stack(self, num_blocks: int) -> None:
        if self.first >= num_blocks:
            raise ValueError(
                f"Taylor.first must be below the number of blocks ({num_blocks}) so that some are forecast, "
                f"got {self.first}"
            )

    def run(self, stack: Stack, h: Hidden, call: Call) -> Hidden:
        state, start, n_blocks = call.state, self.first, stack.num_blocks
        if start:
            h = stack.compute(h, 0, start)
        since = call.index - self.warmup
        compute = (since < 0) | (since % self.interval == 0) | call.fresh
        if self.final:
            compute |= call.final
        if "factors" not in state:
            compute = torch.ones_like(compute)
        run, skip = split(compute)
        if skip is None:
            out = stack.compute(h, start, n_blocks)
            taylor_update(state, sub(out, h), call.sigma, None, self.order)
            return out
        forecast = add(h, taylor_forecast(state, call.sigma))
        stack.count("forecast", start, n_blocks, skip)
        if run is None:
            return forecast
        h_run = take(h, run)
        out_run = stack.compute(h_run, start, n_blocks, rows=run)
        taylor_update(state, sub(out_run, h_run), call.sigma, run, self.order)
        return put(forecast, run, out_run)
