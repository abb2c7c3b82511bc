"""What a cache policy is: a validated dataclass with a `run(stack, h, call)` method, plus the registry.

A policy's fields carry their allowed range (`stretto.spec.bounded`); `__post_init__` checks every field
and the error names the field and the range. The registry maps a short name ("fora", "taylor", ...) to
the class so `parse_policy("taylor:order=2,interval=4")` can build one from the CLI's `--cache` flag.
Per-row state (residuals, Taylor factors, counters) is kept by the mechanism per CFG branch and handed to
`run` as `call.state`; the policy object itself holds only its configuration.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from stretto import spec
from stretto.cache.hidden import Hidden
from stretto.cache.stack import Call, Stack
from stretto.spec import bounded

__all__ = [
    "POLICIES",
    "CachePolicy",
    "UNetPolicy",
    "available",
    "bounded",
    "parse_policy",
    "register",
    "step_only_policies",
]

POLICIES: dict[str, type[CachePolicy]] = {}


def register(cls: type[CachePolicy]) -> type[CachePolicy]:
    """Class decorator: make the policy available by its `name` to parse_policy and the CLI."""
    POLICIES[cls.name] = cls
    return cls


@dataclasses.dataclass
class CachePolicy:
    """Base of all cache policies: validation, description, and the hooks the mechanism calls."""

    name: ClassVar[str] = ""
    unet: ClassVar[bool] = False  # runs on a UNet's down / mid / up blocks instead of a transformer block stack
    # decides what to compute from the step index alone, never from hidden states: the same decision on every
    # rank when a generation's tokens are split over processes (Ulysses)
    step_only: ClassVar[bool] = False
    # keeps its state from one denoising loop to the next of the same generation (a stream's consecutive blocks,
    # `stretto.cache.next_loop`); every other policy starts each loop afresh
    across_loops: ClassVar[bool] = False

    def __post_init__(self) -> None:
        spec.check_ranges(self)

    def check_stack(self, num_blocks: int) -> None:
        """Raise ValueError if this policy cannot run on a stack of `num_blocks` blocks."""

    def reset(self) -> None:
        """Called at the start of every generation (the per-row state is dropped by the mechanism)."""

    def run(self, stack: Stack, h: Hidden, call: Call) -> Hidden:
        """Run (or skip, or forecast) the whole stack for one model call and return its output."""
        raise NotImplementedError

    def describe(self) -> str:
        """The policy as a `--cache` string, e.g. 'fora:interval=2,warmup=1,final=1'."""
        params = ",".join(f"{f.name}={spec.format_value(getattr(self, f.name))}" for f in spec.options(self))
        return f"{self.name}:{params}" if params else self.name

    @classmethod
    def parameters(cls) -> dict[str, str]:
        """Each parameter with its default and allowed range, for help texts and error messages."""
        return spec.describe_options(cls)


class UNetPolicy(CachePolicy):
    """Base of the policies that run on a diffusers UNet's down / mid / up blocks (stretto.cache.unet), not a stack.

    Such a policy says which blocks always run (`kept_levels`) and which steps run the whole UNet (`full`); on the
    other steps the mechanism reuses every other block's output from the branch's last full step.
    """

    unet: ClassVar[bool] = True

    def kept_levels(self, down: int, up: int, model: str) -> tuple[int, int]:
        """How many outermost down blocks and up blocks always run on a UNet with `down` / `up` levels (the mid
        block is always reused); ValueError naming the field if none could be reused."""
        raise NotImplementedError

    def full(self, index: int) -> bool:
        """Whether step `index` runs the whole UNet and stores the reused blocks' outputs."""
        raise NotImplementedError

    def run(self, stack: Stack, h: Hidden, call: Call) -> Hidden:
        raise ValueError(f"{self.name} runs on UNets (UNet2DModel, UNet2DConditionModel), not on {stack.model}")


def available() -> str:
    """Every policy name with its parameters, one per line."""
    lines = []
    for name, cls in sorted(POLICIES.items()):
        params = "; ".join(f"{k}: {v}" for k, v in cls.parameters().items()) or "no parameters"
        lines.append(f"{name}: {params}")
    return "\n".join(lines)


def parse_policy(text: str | CachePolicy) -> CachePolicy:
    """Build a policy from 'name' or 'name:key=value,key=value' (the CLI's --cache flag)."""
    if isinstance(text, CachePolicy):
        return text
    return spec.parse(text, POLICIES, "cache policy")


def step_only_policies() -> list[str]:
    """Names of the policies that decide from the step index alone (those that run under Ulysses)."""
    return sorted(name for name, cls in POLICIES.items() if cls.step_only)
