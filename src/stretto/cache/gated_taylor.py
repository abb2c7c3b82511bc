"""Confidence-gated Taylor: TaylorSeer's forecast ("From Reusing to Forecasting: Accelerating Diffusion Models
with TaylorSeers", Liu et al., 2025), used only when a cheap check says it can be trusted.

TaylorSeer forecasts on a fixed schedule (compute every N steps), blind to whether the forecast is still
good. The gate adds a per-step, per-row check: every step computes the first `first` blocks, and their
residual is compared with its own Taylor forecast from the last full step. When that forecast is close
(relative L1 error mean|r - r_hat| / mean|r| below `threshold`), the residual of the remaining blocks is
forecast by its Taylor series as well and added to the computed output of the first blocks; otherwise
(or during `warmup`, on rows without stored state, or after `max_forecast` consecutive forecasts) the
remaining blocks are computed and both series are updated at this sigma. Both series are anchored on the
same full steps, so the first blocks' forecast error measures how far the anchor is from the present.

The series are TaylorSeer's finite differences in sigma (taylor.py), up to `order`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stretto.cache.hidden import Hidden, add, put, split, sub, take
from stretto.cache.policy import CachePolicy, bounded, register
from stretto.cache.stack import Call, Stack
from stretto.cache.taylor import taylor_forecast, taylor_update
from stretto.cache.teacache import relative_l1

FIRST, REST = "first.", "rest."  # state keys of the first blocks' series and the remaining blocks' series


@register
@dataclass
class GatedTaylor(CachePolicy):
    """Compute the first blocks every step; forecast the rest by Taylor while the first blocks' forecast holds."""

    name = "gatedtaylor"
    order: int = bounded(1, 1, 3, "highest finite difference used")
    threshold: float = bounded(0.05, 0.0, 10.0, "forecast while the first blocks' relative forecast error is below")
    first: int = bounded(1, 1, 10_000, "blocks computed on every step (the gate)")
    warmup: int = bounded(2, 0, 10_000, "full steps at the start")
    max_forecast: int = bounded(8, 1, 10_000, "most consecutive forecast steps")

    def check_stack(self, num_blocks: int) -> None:
        if self.first >= num_blocks:
            raise ValueError(
                f"GatedTaylor.first must be below the number of blocks ({num_blocks}) so that some blocks can be "
                f"forecast, got first={self.first}"
            )

    def run(self, stack: Stack, h: Hidden, call: Call) -> Hidden:
        state, n, k = call.state, stack.num_blocks, self.first
        h1 = stack.compute(h, 0, k)
        r1 = sub(h1, h)
        if f"{REST}factors" not in state:
            compute = torch.ones_like(call.fresh)
            streak = torch.zeros_like(call.index)
        else:
            error = relative_l1(stack.main(taylor_forecast(state, call.sigma, FIRST)), stack.main(r1))
            streak = state["streak"]
            compute = ~(error < self.threshold) | (call.index < self.warmup) | call.fresh  # NaN error: compute
            compute |= streak >= self.max_forecast
        run, skip = split(compute)
        if skip is None:
            out = stack.compute(h1, k, n)
            taylor_update(state, r1, call.sigma, None, self.order, FIRST)
            taylor_update(state, sub(out, h1), call.sigma, None, self.order, REST)
        else:
            out = add(h1, taylor_forecast(state, call.sigma, REST))
            stack.count("forecast", k, n, skip)
            if run is not None:
                h1_run = take(h1, run)
                out_run = stack.compute(h1_run, k, n, rows=run)
                taylor_update(state, take(r1, run), call.sigma, run, self.order, FIRST)
                taylor_update(state, sub(out_run, h1_run), call.sigma, run, self.order, REST)
                out = put(out, run, out_run)
        state["streak"] = torch.where(compute, torch.zeros_like(streak), streak + 1)
        return out
