"""Decoding rules for masked diffusion LMs: which masked positions of the current block to commit this step.

A rule sees the confidences (B, n) of the block's positions (-inf where the position is already committed)
and the step index inside the block; it returns a bool (B, n) mask of positions to commit. The rules here read
confidences only (`select`); Learn2PD's learned rule (`learned`) also reads the probabilities and the argmax
(`choose`). A rule never sees the model or the cache. Rules are written "name:key=value,...", e.g.
"threshold:tau=0.9", and built by `parse_rule` with the one spec parser (`stretto.spec`); "baseline" is another
name for "lowconf".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from stretto import spec
from stretto.spec import bounded


def _ranks(conf: torch.Tensor) -> torch.Tensor:
    """Rank of each position by confidence, 0 = most confident (ties broken by position)."""
    order = torch.sort(conf, dim=-1, descending=True, stable=True).indices
    return torch.empty_like(order).scatter_(-1, order, torch.arange(conf.shape[-1]).expand_as(order).contiguous())


@dataclass
class Rule:
    """Base of the decoding rules: a validated config; `select` picks the positions to commit each step."""

    name: ClassVar[str] = ""
    positive: ClassVar[tuple[str, ...]] = ()  # fields whose range excludes its lower end (0 would never commit)

    def __post_init__(self) -> None:
        for f in spec.options(self):
            if f.name not in self.positive:
                continue
            value, (lo, hi) = getattr(self, f.name), f.metadata["range"]
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not (number and lo < value <= hi):
                allowed = spec.range_text(f).replace("[", "(", 1)
                raise ValueError(f"{type(self).__name__}.{f.name} must be {allowed}, got {value!r}")
        spec.check_ranges(self)

    def start_block(self, n_masked: torch.Tensor, block_length: int) -> None:
        """Called at every block start with the masked count per row (B,)."""

    def select(self, conf: torch.Tensor, step: int) -> torch.Tensor:
        """bool (B, n): the positions to commit, given their confidences (B, n) (-inf: already committed)."""
        raise NotImplementedError

    def choose(self, conf: torch.Tensor, step: int, probs: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """What the decode loop calls: `select` on the confidences; probs (B, n, V) and x0 (B, n) for rules that
        read more."""
        return self.select(conf, step)

    @property
    def ends_at_eot(self) -> bool:
        """Fill every mask after a committed end-of-text at once (Learn2PD's End-of-Text Prediction)?"""
        return False

    def __str__(self) -> str:
        params = ",".join(f"{f.name}={spec.format_value(getattr(self, f.name))}" for f in spec.options(self))
        return f"{self.name}:{params}"


@dataclass
class LowConfidence(Rule):
    """LLaDA's low-confidence remasking (Nie et al. 2025): the k most confident, k on a linear schedule.

    Each block gets ceil(n / tokens) steps and its masked count is split evenly over them (the remainder goes
    to the first steps), so every step commits `tokens` positions, give or take one. With tau < 1 a step also
    commits every position more confident than tau (strictly): LLaDA 2.0's rule (diffusers'
    `BlockRefinementScheduler`: the scheduled top-k, or all over the threshold when they are more).
    """

    tokens: int = bounded(1, 1, 10_000, "positions committed per step")
    tau: float = bounded(1.0, 0.0, 1.0, "also commit every position more confident than this; 1: off")
    name: ClassVar[str] = "lowconf"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._schedule: torch.Tensor | None = None  # per block: positions to commit at each step, per row

    def start_block(self, n_masked: torch.Tensor, block_length: int) -> None:
        steps = math.ceil(block_length / self.tokens)
        base, rem = n_masked // steps, n_masked % steps
        self._schedule = base[:, None] + (torch.arange(steps)[None] < rem[:, None]).long()

    def select(self, conf: torch.Tensor, step: int) -> torch.Tensor:
        k = self._schedule[:, min(step, self._schedule.shape[1] - 1)]
        k = torch.maximum(k, torch.ones_like(k))  # never stall (only reached if a schedule ran out)
        return ((_ranks(conf) < k[:, None]) | (conf > self.tau)) & torch.isfinite(conf)

    def __str__(self) -> str:
        return super().__str__() if self.tau < 1 else f"{self.name}:tokens={self.tokens}"  # tau=1 is plain LLaDA


@dataclass
class Threshold(Rule):
    """Fast-dLLM's threshold rule (Wu et al. 2025): commit all with confidence >= tau, at least one."""

    tau: float = bounded(0.9, 0.0, 1.0, "commit every position at least this confident; > 0")
    name: ClassVar[str] = "threshold"
    positive: ClassVar[tuple[str, ...]] = ("tau",)

    def select(self, conf: torch.Tensor, step: int) -> torch.Tensor:
        return ((conf >= self.tau) | (_ranks(conf) == 0)) & torch.isfinite(conf)


@dataclass
class Factor(Rule):
    """Fast-dLLM's factor rule (Wu et al. 2025): commit the largest n with (n+1)(1 - c_n) < f, at least one.

    c_1 >= c_2 >= ... are the block's confidences, sorted.
    """

    f: float = bounded(1.0, 0.0, 1000.0, "the factor bound, > 0; larger commits more per step")
    name: ClassVar[str] = "factor"
    positive: ClassVar[tuple[str, ...]] = ("f",)

    def select(self, conf: torch.Tensor, step: int) -> torch.Tensor:
        c = torch.sort(conf, dim=-1, descending=True).values
        n = torch.arange(1, conf.shape[-1] + 1, dtype=conf.dtype)
        ok = ((n + 1) * (1 - c) < self.f) & torch.isfinite(c)
        largest = torch.where(ok, n, torch.zeros_like(n)).amax(dim=-1).clamp(min=1)
        return (_ranks(conf) < largest[:, None]) & torch.isfinite(conf)


RULES: dict[str, type[Rule]] = {
    "lowconf": LowConfidence,
    "baseline": LowConfidence,  # LLaDA's baseline, the name benchmarks compare against
    "threshold": Threshold,
    "factor": Factor,
}


def register(cls: type[Rule]) -> type[Rule]:
    """Class decorator: a rule in its own file (`learned`) made available by its `name` to parse_rule."""
    RULES[cls.name] = cls
    return cls


def parse_rule(text: str) -> Rule:
    """'threshold:tau=0.9' / 'factor:f=1' / 'lowconf:tokens=1' (alias 'baseline') / 'learned:tau=0.9' -> a rule.

    The package (`stretto.pipelines.text`) imports `learned`, which registers itself, before this can run.
    """
    return spec.parse(text, RULES, "decoding rule")
