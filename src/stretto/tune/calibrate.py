"""Calibrating TeaCache and MagCache for a model: full-compute generations that record what the policies need.

- `calibrate_teacache` records, per call and batch row, x = the relative L1 change of block 0's modulated
  input (TeaCache's signal, see stretto/cache/teacache.py) and y = the relative L1 change of the stack's
  output residual (output - input on the image tokens: what TeaCache reuses), both against the previous
  call of the same CFG branch, and fits y ~ polyval(c, x) by least squares (numpy.polyfit). TeaCache
  (Liu et al., CVPR 2025) rescales its signal by such a polynomial; no public project ships the fitting tool.
- `calibrate_magcache` runs MagCache (Ma et al., 2025) in its calibration mode and averages the residual
  magnitude ratio per step index over all prompts and both CFG branches.

Both run the image pipeline (`stretto.pipelines.image.generate`), so the model is a stretto text-to-image
model; the recording is a cache policy that goes through the normal cache mechanism (stretto.cache), so any
block stack the mechanism supports can be calibrated the same way. `run_teacache_calibration` and
`run_magcache_calibration` load a model by name, record the run as JSON and a figure, and are what
`stretto calibrate cache teacache|magcache` calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from stretto.bench.report import describe_machine
from stretto.cache.hidden import Hidden
from stretto.cache.magcache import MagCache
from stretto.cache.policy import CachePolicy
from stretto.cache.stack import Call, Stack
from stretto.cache.teacache import modulated_input, relative_l1
from stretto.pipelines.image import generate
from stretto.tune.inputs import TUNING_GUIDANCE, TUNING_SAMPLER, TUNING_STEPS, load_inputs, record
from stretto.tune.plots import plot_magcache_calibration, plot_teacache_calibration

MAX_DEGREE = 10
DEFAULT_DEGREE = 4
CALIBRATION_PROMPTS = 8


@dataclass
class TeaCacheRecorder(CachePolicy):
    """Compute everything; record TeaCache's input change (x) and the output residual's change (y) per row."""

    name = "teacache-calibration"  # not registered: a tool, not a cache
    records: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(
        default_factory=list, init=False, repr=False, compare=False
    )

    def run(self, stack: Stack, h: Hidden, call: Call) -> Hidden:
        state = call.state
        m = modulated_input(stack.blocks[0], stack.main(h), stack.extras)
        out = stack.compute(h, 0, stack.num_blocks)
        r = stack.main(out) - stack.main(h)
        if "modulated" in state:
            keep = ~call.fresh
            x, y = relative_l1(m, state["modulated"]), relative_l1(r, state["residual"])
            self.records.append((call.index[keep], x[keep].float(), y[keep].float()))
        state["modulated"], state["residual"] = m, r
        return out

    def pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Step index, x and y of every recorded (call, row), as numpy arrays."""
        if not self.records:
            return np.zeros(0, dtype=int), np.zeros(0), np.zeros(0)
        index, x, y = (torch.cat(parts).cpu().numpy() for parts in zip(*self.records, strict=True))
        return index.astype(int), x.astype(np.float64), y.astype(np.float64)


@dataclass
class TeaCacheFit:
    """TeaCache's rescaling polynomial fitted on recorded (x, y) pairs."""

    coefficients: list[float]  # highest power first (numpy.polyval order)
    r2: float  # coefficient of determination of the fit
    index: list[int]  # step index of each pair
    x: list[float]  # relative L1 change of the modulated input
    y: list[float]  # relative L1 change of the stack output residual

    @property
    def coefficients_text(self) -> str:
        return "/".join(f"{c:.6g}" for c in self.coefficients)

    def spec(self) -> str:
        """The `--cache` string using these coefficients (add threshold=... to choose the speed)."""
        return f"teacache:coefficients={self.coefficients_text}"


@dataclass
class MagCacheFit:
    """MagCache's ratio per step index (step 0, which has no previous step, gets 1)."""

    ratios: list[float]

    @property
    def ratios_text(self) -> str:
        return "/".join(f"{r:.4f}" for r in self.ratios)

    def spec(self) -> str:
        """The `--cache` string using these ratios."""
        return f"magcache:ratios={self.ratios_text}"


def fit_polynomial(x: np.ndarray, y: np.ndarray, degree: int) -> tuple[list[float], float]:
    """Least-squares y ~ polyval(c, x): the coefficients (highest power first) and R^2."""
    coefficients = np.polyfit(x, y, degree)
    residual = y - np.polyval(coefficients, x)
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / total if total > 0 else 1.0
    return [float(c) for c in coefficients], r2


def _check_steps(steps: int) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 2:
        raise ValueError(f"calibration needs steps >= 2 (changes between consecutive steps), got {steps!r}")


def _check_degree(degree: int) -> None:
    if not isinstance(degree, int) or isinstance(degree, bool) or not 1 <= degree <= MAX_DEGREE:
        raise ValueError(f"degree must be an integer in [1, {MAX_DEGREE}], got {degree!r}")


def _check(prompts: Sequence[str], steps: int) -> None:
    if not prompts:
        raise ValueError("calibration needs at least one prompt")
    _check_steps(steps)


def calibrate_teacache(
    model,
    prompts: Sequence[str],
    steps: int,
    sampler: str,
    guidance: float,
    seeds: Sequence[int] | int = 0,
    degree: int = DEFAULT_DEGREE,
) -> TeaCacheFit:
    """Fit TeaCache's coefficients for `model` on full-compute generations of `prompts` (one batched run)."""
    _check(prompts, steps)
    _check_degree(degree)
    recorder = TeaCacheRecorder()
    generate(model, prompts, steps=steps, sampler=sampler, guidance=guidance, seeds=seeds, cache=recorder)
    index, x, y = recorder.pairs()
    finite = np.isfinite(x) & np.isfinite(y)
    index, x, y = index[finite], x[finite], y[finite]
    if len(np.unique(x)) <= degree:
        raise ValueError(
            f"a degree-{degree} fit needs more than {degree} distinct recorded changes, got {len(np.unique(x))}: "
            "use more steps or prompts, or a lower degree"
        )
    coefficients, r2 = fit_polynomial(x, y, degree)
    return TeaCacheFit(coefficients, r2, index.tolist(), x.tolist(), y.tolist())


class _MeanPerStep(dict):
    """MagCache's calibration table, averaging every value written for a step index instead of keeping the last
    (MagCache writes one per batch row)."""

    def __init__(self):
        super().__init__()
        self.sums: dict[int, tuple[float, int]] = {}

    def __setitem__(self, index: int, value: float) -> None:
        total, count = self.sums.get(index, (0.0, 0))
        self.sums[index] = (total + value, count + 1)
        super().__setitem__(index, (total + value) / (count + 1))

    def clear(self) -> None:
        self.sums.clear()
        super().clear()


def calibrate_magcache(
    model,
    prompts: Sequence[str],
    steps: int,
    sampler: str,
    guidance: float,
    seeds: Sequence[int] | int = 0,
) -> MagCacheFit:
    """MagCache's ratios for `model`: its calibration mode on one full-compute batched run of `prompts`, the
    ratio per step index averaged over all prompts and both CFG branches."""
    _check(prompts, steps)
    policy = MagCache(calibrate=True)
    policy.calibration = _MeanPerStep()
    generate(model, prompts, steps=steps, sampler=sampler, guidance=guidance, seeds=seeds, cache=policy)
    table = dict(policy.calibration)
    missing = [i for i in range(1, steps) if i not in table]
    if missing:
        raise ValueError(f"MagCache's calibration recorded no ratio for steps {missing} (a sampler keyed elsewhere?)")
    return MagCacheFit([1.0] + [float(table[i]) for i in range(1, steps)])


def run_teacache_calibration(
    json_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    model: str = "shapes-flux",
    device: str | torch.device = "cpu",
    steps: int = TUNING_STEPS,
    sampler: str = TUNING_SAMPLER,
    guidance: float = TUNING_GUIDANCE,
    num_prompts: int = CALIBRATION_PROMPTS,
    degree: int = DEFAULT_DEGREE,
) -> dict:
    """Fit TeaCache's polynomial for the model named `model`; write JSON (and a plot) where given, return the dict."""
    _check_degree(degree)
    _check_steps(steps)
    net, prompts = load_inputs(model, device, num_prompts, steps, sampler, guidance)
    settings = {"steps": steps, "sampler": sampler, "guidance": guidance, "seeds": 0}
    fit = calibrate_teacache(net, prompts, degree=degree, **settings)
    result = {
        "method": "teacache",
        "model": model,
        "machine": describe_machine(device),
        "settings": settings,
        "prompts": prompts,
        "degree": degree,
        "coefficients": fit.coefficients,
        "r2": fit.r2,
        "spec": fit.spec(),
        "pairs": {"index": fit.index, "x": fit.x, "y": fit.y},
    }
    return record(result, json_path, plot_path, plot_teacache_calibration)


def run_magcache_calibration(
    json_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    model: str = "shapes-flux",
    device: str | torch.device = "cpu",
    steps: int = TUNING_STEPS,
    sampler: str = TUNING_SAMPLER,
    guidance: float = TUNING_GUIDANCE,
    num_prompts: int = CALIBRATION_PROMPTS,
) -> dict:
    """Measure MagCache's ratios for the model named `model`; write JSON (and a plot) where given, return the dict."""
    _check_steps(steps)
    net, prompts = load_inputs(model, device, num_prompts, steps, sampler, guidance)
    settings = {"steps": steps, "sampler": sampler, "guidance": guidance, "seeds": 0}
    fit = calibrate_magcache(net, prompts, **settings)
    result = {
        "method": "magcache",
        "model": model,
        "machine": describe_machine(device),
        "settings": settings,
        "prompts": prompts,
        "ratios": fit.ratios,
        "spec": fit.spec(),
    }
    return record(result, json_path, plot_path, plot_magcache_calibration)
