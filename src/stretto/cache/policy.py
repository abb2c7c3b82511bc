"""What a cache policy is: a validated dataclass with a `run(stack, h, call)` method, plus the registry and parser.

A policy's fields carry their allowed range in `field(metadata=...)`; `__post_init__` checks every field
and the error names the field and the range. The registry maps a short name ("fora", "taylor", ...) to
the class so `parse_policy("taylor:order=2,interval=4")` can build one from the CLI's `--cache` flag.
Per-row state (residuals, Taylor factors, counters) is kept by the mechanism per CFG branch and handed to
`run` as `call.state`; the policy object itself holds only its configuration.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

from stretto.cache.mechanism import Call, Hidden, Stack

POLICIES: dict[str, type[CachePolicy]] = {}


def register(cls: type[CachePolicy]) -> type[CachePolicy]:
    """Class decorator: make the policy available by its `name` to parse_policy and the CLI."""
    POLICIES[cls.name] = cls
    return cls


def bounded(default: Any, lo: float, hi: float = math.inf, doc: str = "") -> Any:
    """A dataclass field with an allowed closed range [lo, hi] (the type is taken from the annotation)."""
    return dataclasses.field(default=default, metadata={"range": (lo, hi), "doc": doc})


def _range_text(f: dataclasses.Field) -> str:
    if f.type in ("bool", bool):
        return "true or false"
    if "range" not in f.metadata:
        return "text"
    lo, hi = f.metadata["range"]
    kind = "an integer" if f.type in ("int", int) else "a number"
    return f"{kind} in [{lo:g}, {'inf' if hi == math.inf else f'{hi:g}'}]"


@dataclasses.dataclass
class CachePolicy:
    """Base of all cache policies: validation, description, and the hooks the mechanism calls."""

    name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        cls = type(self).__name__
        for f in dataclasses.fields(self):
            if "range" not in f.metadata:
                continue
            value = getattr(self, f.name)
            lo, hi = f.metadata["range"]
            if f.type in ("bool", bool):
                ok = isinstance(value, bool)
            elif f.type in ("int", int):
                ok = isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi
            else:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value <= hi
            if not ok:
                raise ValueError(f"{cls}.{f.name} must be {_range_text(f)}, got {value!r}")

    def check_stack(self, num_blocks: int) -> None:
        """Raise ValueError if this policy cannot run on a stack of `num_blocks` blocks."""

    def reset(self) -> None:
        """Called at the start of every generation (the per-row state is dropped by the mechanism)."""

    def run(self, stack: Stack, h: Hidden, call: Call) -> Hidden:
        """Run (or skip, or forecast) the whole stack for one model call and return its output."""
        raise NotImplementedError

    def describe(self) -> str:
        """The policy as a `--cache` string, e.g. 'fora:interval=2,warmup=1,final=1'."""
        params = ",".join(f"{f.name}={_fmt(getattr(self, f.name))}" for f in _params(self))
        return f"{self.name}:{params}" if params else self.name

    @classmethod
    def parameters(cls) -> dict[str, str]:
        """Each parameter with its default and allowed range, for help texts and error messages."""
        return {
            f.name: f"{_range_text(f)}, default {_fmt(f.default)}"
            + (f" ({f.metadata['doc']})" if f.metadata.get("doc") else "")
            for f in _params(cls)
        }


def _params(cls_or_policy) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls_or_policy) if f.init]


def _fmt(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else str(value)


def available() -> str:
    """Every policy name with its parameters, one per line."""
    lines = []
    for name, cls in sorted(POLICIES.items()):
        params = "; ".join(f"{k}: {v}" for k, v in cls.parameters().items()) or "no parameters"
        lines.append(f"{name}: {params}")
    return "\n".join(lines)


def parse_policy(spec: str) -> CachePolicy:
    """Build a policy from 'name' or 'name:key=value,key=value' (the CLI's --cache flag)."""
    if isinstance(spec, CachePolicy):
        return spec
    name, _, rest = spec.strip().partition(":")
    cls = POLICIES.get(name.strip().lower())
    if cls is None:
        raise ValueError(f"unknown cache policy {name!r}; choose one of {', '.join(sorted(POLICIES))}")
    fields = {f.name: f for f in _params(cls)}
    kwargs: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, raw = item.partition("=")
        key = key.strip()
        if key not in fields:
            allowed = "; ".join(f"{k}: {v}" for k, v in cls.parameters().items()) or "none"
            raise ValueError(f"unknown parameter {key!r} for cache policy {cls.name!r}; allowed: {allowed}")
        if not eq:
            raise ValueError(f"cache parameter {key!r} needs a value, e.g. {key}={_fmt(fields[key].default)}")
        kwargs[key] = _convert(cls, fields[key], raw.strip())
    return cls(**kwargs)


def _convert(cls: type, f: dataclasses.Field, raw: str) -> Any:
    try:
        if f.type in ("bool", bool):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return raw.lower() in ("true", "1", "yes")
        if f.type in ("int", int):
            return int(raw)
        if f.type in ("str", str):
            return raw
        return float(raw)
    except ValueError:
        raise ValueError(f"{cls.__name__}.{f.name} must be {_range_text(f)}, got {raw!r}") from None
