"""MagCache: "MagCache: Fast Video Generation with Magnitude-Aware Cache" (Ma et al., 2025).

The ratio of the stack residual's magnitude between consecutive steps is nearly the same for every
prompt, so it is measured once per model (a calibration run) and then predicts the error of reusing a
residual: skipping steps multiplies the ratios, and the accumulated error sum |1 - prod ratio| must stay
under `threshold`, with at most `max_skip` consecutive skips; `warmup` early steps always compute.

Calibrate: run one generation with `calibrate=true` (everything is computed); `policy.calibration` then
holds one ratio per step index (the mean over the batch), and `policy.ratios_text()` the value for
`ratios=` (or run `stretto calibrate cache magcache`). Without ratios and without `calibrate` the policy
refuses to be built: it would compute every block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from stretto.cache.hidden import Hidden
from stretto.cache.policy import CachePolicy, bounded, register
from stretto.cache.stack import Call, Stack


@register
@dataclass
class MagCache(CachePolicy):
    """Reuse the stack residual while the calibrated magnitude ratios predict a small accumulated error."""

    name = "magcache"
    threshold: float = bounded(0.06, 0.0, 10.0, "bound on the accumulated ratio error")
    max_skip: int = bounded(2, 0, 1000, "most consecutive skipped steps")
    warmup: int = bounded(2, 0, 1000, "full steps at the start")
    ratios: str = field(default="", metadata={"doc": "calibrated ratios per step, '/'-separated"})
    calibrate: bool = bounded(False, 0, 1, "compute everything and record the ratios (policy.ratios_text())")
    calibration: dict[int, float] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            self._ratios = [float(r) for r in self.ratios.split("/")] if self.ratios.strip() else []
        except ValueError:
            raise ValueError(
                f"MagCache.ratios must be positive numbers separated by '/', e.g. '1.0/0.98/0.97', got {self.ratios!r}"
            ) from None
        if any(not r > 0 for r in self._ratios):
            raise ValueError(f"MagCache.ratios must be positive numbers separated by '/', got {self.ratios!r}")
        if not self._ratios and not self.calibrate:
            raise ValueError(
                "MagCache needs calibrated ratios: give ratios='1.0/0.98/...' (stretto calibrate cache magcache) or "
                "calibrate=true for one full-compute run that records them"
            )

    def reset(self) -> None:
        self.calibration.clear()  # a calibration covers one generation

    def ratios_text(self) -> str:
        """The calibration as a `ratios=` value."""
        return "/".join(f"{self.calibration[i]:.4f}" for i in sorted(self.calibration))

    def run(self, stack: Stack, h: Hidden, call: Call) -> Hidden:
        state, n = call.state, stack.num_blocks
        if self.calibrate:
            out = stack.compute(h, 0, n)
            residual = stack.main(out) - stack.main(h)
            norm = residual.norm(dim=-1).reshape(residual.shape[0], -1).mean(1)  # mean token norm per row
            if "norm" in state:  # the mean ratio over this call's rows at each step index
                ratio = norm / state["norm"]
                for i in call.index.unique().tolist():
                    self.calibration[i] = ratio[call.index == i].mean().item()
            state["norm"] = norm
            return out
        table = torch.tensor(self._ratios, device=call.index.device)
        ratio = table[call.index.clamp(max=len(table) - 1)]
        acc_ratio = state.get("acc_ratio", torch.ones_like(ratio)) * ratio
        acc_err = state.get("acc_err", torch.zeros_like(ratio)) + (1 - acc_ratio).abs()
        acc_steps = state.get("acc_steps", torch.zeros_like(call.index)) + 1
        skip = (acc_err <= self.threshold) & (acc_steps <= self.max_skip) & (call.index >= self.warmup)
        compute = ~skip | call.fresh
        out = stack.compute_or_reuse(h, 0, n, compute, state, "residual")
        state["acc_ratio"] = torch.where(compute, torch.ones_like(acc_ratio), acc_ratio)
        state["acc_err"] = torch.where(compute, torch.zeros_like(acc_err), acc_err)
        state["acc_steps"] = torch.where(compute, torch.zeros_like(acc_steps), acc_steps)
        return out
