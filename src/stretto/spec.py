"""The one parser for every `name:key=value,...` string: cache policies, text decoding rules, text KV caches.

Syntax: `name` or `name:key=value,key=value`. A boolean option may be written bare (`dual:delay` means
`delay=true`); booleans also take true/false, 1/0, yes/no. Each name maps to a dataclass in a registry; a
value is converted by the type of the field it sets, and a field declared with `bounded(...)` carries its
allowed range, so `check_ranges` can name the field, the range and the bad value in one line.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def bounded(default: Any, lo: float, hi: float = math.inf, doc: str = "") -> Any:
    """A dataclass field with an allowed closed range [lo, hi] (the type is taken from the annotation)."""
    return dataclasses.field(default=default, metadata={"range": (lo, hi), "doc": doc})


def _is(f: dataclasses.Field, t: type) -> bool:
    return f.type in (t.__name__, t)


def range_text(f: dataclasses.Field) -> str:
    """How a field's allowed values read in an error: 'an integer in [1, 1000]', 'true or false', ..."""
    if _is(f, bool):
        return "true or false"
    kind = "an integer" if _is(f, int) else "a number" if _is(f, float) else "text"
    if "range" not in f.metadata:
        return kind
    lo, hi = f.metadata["range"]
    return f"{kind} in [{lo:g}, {'inf' if hi == math.inf else f'{hi:g}'}]"


def format_value(value: Any) -> str:
    """A value as it is written in a spec string."""
    return str(value).lower() if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else str(value)


def options(cls_or_obj) -> list[dataclasses.Field]:
    """The fields a spec string may set (init fields of the dataclass)."""
    return [f for f in dataclasses.fields(cls_or_obj) if f.init]


def describe_options(cls: type) -> dict[str, str]:
    """Each option with its allowed values and default, for help texts and error messages."""
    return {
        f.name: f"{range_text(f)}, default {format_value(f.default)}"
        + (f" ({f.metadata['doc']})" if f.metadata.get("doc") else "")
        for f in options(cls)
    }


def check_ranges(obj) -> None:
    """Raise ValueError naming the first field of `obj` outside its `bounded` range (or of the wrong type)."""
    for f in dataclasses.fields(obj):
        if "range" not in f.metadata:
            continue
        value = getattr(obj, f.name)
        lo, hi = f.metadata["range"]
        if _is(f, bool):
            ok = isinstance(value, bool)
        elif _is(f, int):
            ok = isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi
        else:
            ok = isinstance(value, int | float) and not isinstance(value, bool) and lo <= value <= hi
        if not ok:
            raise ValueError(f"{type(obj).__name__}.{f.name} must be {range_text(f)}, got {value!r}")


def split(text: str) -> tuple[str, dict[str, str | None]]:
    """'name:key=value,flag' -> ('name', {'key': 'value', 'flag': None}); names are lower-cased."""
    name, _, rest = str(text).strip().partition(":")
    items: dict[str, str | None] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        items[key.strip()] = value.strip() if eq else None
    return name.strip().lower(), items


def _convert(cls: type, f: dataclasses.Field, raw: str | None, what: str) -> Any:
    if raw is None:
        if _is(f, bool):
            return True
        raise ValueError(f"{what} option {f.name!r} needs a value, e.g. {f.name}={format_value(f.default)}")
    try:
        if _is(f, bool):
            if raw.lower() not in _TRUE + _FALSE:
                raise ValueError
            return raw.lower() in _TRUE
        if _is(f, int):
            return int(raw)
        if _is(f, float):
            return float(raw)
        return raw
    except ValueError:
        raise ValueError(f"{cls.__name__}.{f.name} must be {range_text(f)}, got {raw!r}") from None


def parse(text: str, registry: dict[str, type], what: str) -> Any:
    """Build the registered dataclass a spec string names, e.g. parse('taylor:order=2', POLICIES, 'cache policy')."""
    name, items = split(text)
    cls = registry.get(name)
    if cls is None:
        raise ValueError(f"unknown {what} {name!r}; allowed: {', '.join(sorted(registry))}")
    fields = {f.name: f for f in options(cls)}
    kwargs = {}
    for key, raw in items.items():
        if key not in fields:
            allowed = "; ".join(f"{k}: {v}" for k, v in describe_options(cls).items()) or "none"
            raise ValueError(f"unknown parameter {key!r} for {what} {name!r}; allowed: {allowed}")
        kwargs[key] = _convert(cls, fields[key], raw, what)
    return cls(**kwargs)
