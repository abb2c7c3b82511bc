"""Decoding rules for masked diffusion LMs: which masked positions of the current block to commit this step.

A rule sees only confidences (B, n) of the block's positions (-inf where the position is already committed)
and the step index inside the block; it returns a bool (B, n) mask of positions to commit.
It never sees the model or the cache. Rules are written as "name:key=value,...", e.g. "threshold:tau=0.9".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def _ranks(conf: torch.Tensor) -> torch.Tensor:
    """Rank of each position by confidence, 0 = most confident (ties broken by position)."""
    order = torch.sort(conf, dim=-1, descending=True, stable=True).indices
    return torch.empty_like(order).scatter_(-1, order, torch.arange(conf.shape[-1]).expand_as(order).contiguous())


@dataclass
class LowConfidence:
    """LLaDA's low-confidence remasking (Nie et al. 2025): the k most confident, k on a linear schedule.

    Each block gets ceil(n / tokens) steps and its masked count is split evenly over them (the remainder goes
    to the first steps), so every step commits `tokens` positions, give or take one.
    """

    tokens: int = 1
    name = "lowconf"

    def __post_init__(self):
        if self.tokens < 1:
            raise ValueError(f"lowconf tokens must be >= 1, got {self.tokens}")
        self._schedule: torch.Tensor | None = None

    def start_block(self, n_masked: torch.Tensor, block_length: int) -> None:
        steps = math.ceil(block_length / self.tokens)
        base, rem = n_masked // steps, n_masked % steps
        self._schedule = base[:, None] + (torch.arange(steps)[None] < rem[:, None]).long()

    def select(self, conf: torch.Tensor, step: int) -> torch.Tensor:
        k = self._schedule[:, min(step, self._schedule.shape[1] - 1)]
        k = torch.maximum(k, torch.ones_like(k))  # never stall (only reached if a schedule ran out)
        return (_ranks(conf) < k[:, None]) & torch.isfinite(conf)

    def __str__(self) -> str:
        return f"lowconf:tokens={self.tokens}"


@dataclass
class Threshold:
    """Fast-dLLM's threshold rule (Wu et al. 2025): commit all with confidence >= tau, at least one."""

    tau: float = 0.9
    name = "threshold"

    def __post_init__(self):
        if not 0 < self.tau <= 1:
            raise ValueError(f"threshold tau must be in (0, 1], got {self.tau}")

    def start_block(self, n_masked: torch.Tensor, block_length: int) -> None:
        pass

    def select(self, conf: torch.Tensor, step: int) -> torch.Tensor:
        return ((conf >= self.tau) | (_ranks(conf) == 0)) & torch.isfinite(conf)

    def __str__(self) -> str:
        return f"threshold:tau={self.tau:g}"


@dataclass
class Factor:
    """Fast-dLLM's factor rule: with c_1 >= c_2 >= ..., commit the largest n with (n+1)(1-c_n) < f, >= 1."""

    f: float = 1.0
    name = "factor"

    def __post_init__(self):
        if not self.f > 0:
            raise ValueError(f"factor f must be > 0, got {self.f}")

    def start_block(self, n_masked: torch.Tensor, block_length: int) -> None:
        pass

    def select(self, conf: torch.Tensor, step: int) -> torch.Tensor:
        c = torch.sort(conf, dim=-1, descending=True).values
        n = torch.arange(1, conf.shape[-1] + 1, dtype=conf.dtype)
        ok = ((n + 1) * (1 - c) < self.f) & torch.isfinite(c)
        largest = torch.where(ok, n, torch.zeros_like(n)).amax(dim=-1).clamp(min=1)
        return (_ranks(conf) < largest[:, None]) & torch.isfinite(conf)

    def __str__(self) -> str:
        return f"factor:f={self.f:g}"


RULES = {"lowconf": LowConfidence, "baseline": LowConfidence, "threshold": Threshold, "factor": Factor}
_PARAMS = {"lowconf": {"tokens": int}, "threshold": {"tau": float}, "factor": {"f": float}}


def parse_options(spec: str, allowed: dict[str, type], what: str) -> dict:
    """'key=value,key=value' -> dict, with each value converted and unknown keys refused."""
    out = {}
    for item in filter(None, spec.split(",")):
        key, eq, value = item.partition("=")
        key = key.strip()
        if key not in allowed:
            raise ValueError(f"unknown option {key!r} for {what}; allowed: {sorted(allowed) or 'none'}")
        if not eq:
            value = "1"  # a bare flag, e.g. "dual:delay"
        try:
            out[key] = allowed[key](value) if allowed[key] is not bool else value.strip() not in ("0", "false")
        except ValueError:
            raise ValueError(f"option {key}={value!r} of {what} is not a valid {allowed[key].__name__}") from None
    return out


def parse_rule(spec) -> LowConfidence | Threshold | Factor:
    """'threshold:tau=0.9' / 'factor:f=1' / 'lowconf:tokens=1' (alias 'baseline') -> a rule object."""
    if isinstance(spec, LowConfidence | Threshold | Factor):
        return spec
    name, _, opts = str(spec).partition(":")
    name = name.strip()
    if name not in RULES:
        raise ValueError(f"unknown decoding rule {name!r}; allowed: {sorted(RULES)} (e.g. 'threshold:tau=0.9')")
    cls = RULES[name]
    return cls(**parse_options(opts, _PARAMS[cls.name], f"decoding rule {cls.name!r}"))
