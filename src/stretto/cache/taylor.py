"""TaylorSeer: "From Reusing to Forecasting: Accelerating Diffusion Models with TaylorSeers" (Liu et al., 2025).

On full steps the stack's residual (output - input) F is stored with its finite differences up to
`order`, each divided by the sigma gap between the two computed steps it comes from; on the steps in
between the residual is forecast as F(s) = sum_i D^i F / i! * (s - s_last)^i and added to the input.
The paper forecasts every layer's attention and MLP outputs and uses the step index as the variable;
here one forecast covers the whole stack and the variable is sigma (the mechanism passes it explicitly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from stretto.cache.mechanism import Call, Hidden, Stack, add, per_row, put, split, sub, take
from stretto.cache.policy import CachePolicy, bounded, register


@register
@dataclass
class Taylor(CachePolicy):
    """Compute the stack every `interval` steps after `warmup`; forecast its residual by a Taylor series between."""

    name = "taylor"
    order: int = bounded(2, 1, 3, "highest finite difference used")
    interval: int = bounded(4, 1, 1000, "compute every N-th step")
    warmup: int = bounded(2, 0, 1000, "full steps at the start")

    def run(self, stack: Stack, h: Hidden, call: Call) -> Hidden:
        state, n_blocks = call.state, stack.num_blocks
        since = call.index - self.warmup
        compute = (since < 0) | (since % self.interval == 0) | call.fresh
        if "factors" not in state:
            compute = torch.ones_like(compute)
        run, skip = split(compute)
        if skip is None:
            out = stack.compute(h, 0, n_blocks)
            self._update(state, sub(out, h), call.sigma, None)
            return out
        forecast = add(h, self._forecast(state, call.sigma))
        stack.count("forecast", 0, n_blocks, skip)
        if run is None:
            return forecast
        h_run = take(h, run)
        out_run = stack.compute(h_run, 0, n_blocks, rows=run)
        self._update(state, sub(out_run, h_run), call.sigma, run)
        return put(forecast, run, out_run)

    def _forecast(self, state: dict, sigma: torch.Tensor) -> Hidden:
        dt = sigma - state["sigma"]
        total = state["factors"][0]
        for i, d in enumerate(state["factors"][1:], start=1):
            total = tuple(
                None if t is None else t + x * per_row(dt**i / math.factorial(i), x)
                for t, x in zip(total, d, strict=True)
            )
        return total

    def _update(self, state: dict, feature: Hidden, sigma: torch.Tensor, rows: torch.Tensor | None) -> None:
        """New factors for the computed rows; a difference needs as many earlier computed steps as its order."""
        old = state.get("factors")
        if rows is not None:
            old_rows = [take(d, rows) for d in old]
            s_old, n_old = state["sigma"][rows], state["computed"][rows]
            s_new = sigma[rows]
        else:
            old_rows, s_old, n_old, s_new = old, state.get("sigma"), state.get("computed"), sigma
        new = [feature]
        if old_rows is not None:
            gap = s_new - s_old
            same = gap == 0  # recomputed at the same sigma (e.g. a 2-stage sampler): keep the old differences
            gap = torch.where(same, torch.ones_like(gap), gap)
            for i in range(self.order):
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
            new += [zero] * self.order
            n_new = torch.ones_like(sigma, dtype=torch.long)
        if rows is None:
            state["factors"], state["sigma"], state["computed"] = new, sigma, n_new
        else:
            state["factors"] = [put(o, rows, d) for o, d in zip(old, new, strict=True)]
            state["sigma"] = state["sigma"].index_copy(0, rows, s_new)
            state["computed"] = state["computed"].index_copy(0, rows, n_new)
