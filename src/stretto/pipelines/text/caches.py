"""KV cache modes for masked-diffusion decoding: which slots each step runs, and what it reads from the cache.

Cache specs are written "mode:key=value,..." and built by `parse_cache` with the one spec parser:
- "none": every step runs the whole canvas (LLaDA).
- "prefix": at a block start one full pass fills the cache; later steps run block + suffix against the cached
  prefix (Fast-dLLM, Wu et al. 2025).
- "dual": the same, but later steps run only the block, overwrite its slots and attend to the stale prefix and
  suffix (Fast-dLLM's DualCache).
- "block": block-causal models only: the prompt and every finished block are written once by a clean pass,
  and steps run only the block. Exact (BD3-LM, Arriola et al. 2025; Fast-dLLM v2). "block:fuse" writes a
  finished block's clean K/V in the first pass of the next block instead of a separate pass (one model call
  fewer per block; exact, since the finished block's queries see only itself and earlier blocks).
prefix and dual take the refresh options of `refresh` (every=N, drift=b[,layer=l], delay), in any combination.

A mode is a dataclass holding its validated config; the decode loop calls its hooks (`start`, `start_block`,
`logits`, `end_block`) and never asks which mode it has. The hooks that need the model are generators: they
ask for each call with `yield from calls.run(lo, hi)` (a `model_calls.Call`), so one row's decoding reads the
same whether its calls run alone or batched with rows at other blocks (continuous batching). The little state a
mode keeps across steps (a pending fused block, the refresh options' watched token) is dropped by `start()` at
the start of every generation; continuous batching gives every row its own copy of the mode.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from stretto import spec
from stretto.models.text_lm import TextLM
from stretto.pipelines.text.model_calls import Call, Reply, Slots
from stretto.pipelines.text.refresh import DelayedCaching, DriftRefresh, Periodic, Refresh
from stretto.spec import bounded

CACHES: dict[str, type[CacheMode]] = {}
Calls = Generator[Call, Reply, None]  # a hook that asks for model calls and returns nothing


def register(cls: type[CacheMode]) -> type[CacheMode]:
    """Class decorator: make the mode available by its `name` to parse_cache."""
    CACHES[cls.name] = cls
    return cls


@dataclass
class CacheMode:
    """Base of the cache modes: validation, the canonical spec string, and the hooks the decode loop calls."""

    name: ClassVar[str] = ""
    kinds: ClassVar[tuple[str, ...] | None] = None  # model kinds the mode applies to; None: every model
    uses_kv: ClassVar[bool] = True

    def __post_init__(self) -> None:
        spec.check_ranges(self)

    def check_model(self, model: TextLM) -> None:
        """Raise ValueError if this mode cannot run on `model`."""
        if self.kinds is not None and model.kind not in self.kinds:
            allowed = [name for name, cls in CACHES.items() if cls.kinds is None or model.kind in cls.kinds]
            raise ValueError(f"cache {self.name!r} does not apply to a {model.kind}; allowed: {allowed}")

    def start(self) -> None:
        """Called at the start of every generation: drop the state of the previous one."""

    @property
    def rows_independent(self) -> bool:
        """Does each row of a static batch decode as it would alone? (False when a test is taken over the batch.)"""
        return True

    def start_block(self, calls: Slots, lo: int, hi: int) -> Calls:
        """Called when the block [lo, hi) starts."""
        yield from ()

    def logits(self, calls: Slots, lo: int, hi: int, step: int) -> Generator[Call, Reply, torch.Tensor]:
        """The logits (B, hi - lo, vocab) of the block [lo, hi) at this step, from the model calls it needs."""
        raise NotImplementedError

    def end_block(self, calls: Slots, lo: int, hi: int) -> Calls:
        """Called when every slot of the block [lo, hi) holds its final token."""
        yield from ()

    def __str__(self) -> str:
        """The canonical spec string: options that differ from their default, flags bare ('dual:every=4,delay')."""
        opts = []
        for f in spec.options(self):
            value = getattr(self, f.name)
            if value != f.default:
                opts.append(f.name if value is True else f"{f.name}={spec.format_value(value)}")
        return self.name + (":" + ",".join(opts) if opts else "")


@register
@dataclass
class NoCache(CacheMode):
    """No cache: every step runs the whole canvas (LLaDA, Nie et al. 2025)."""

    name: ClassVar[str] = "none"
    uses_kv: ClassVar[bool] = False

    def logits(self, calls: Slots, lo: int, hi: int, step: int) -> Generator[Call, Reply, torch.Tensor]:
        logits, _ = yield from calls.run(0, calls.end)
        return logits[:, lo:hi]


@register
@dataclass
class PrefixCache(CacheMode):
    """Fast-dLLM's prefix cache (Wu et al. 2025): a full pass per block, then steps run block + suffix."""

    every: int = bounded(0, 0, 10_000, "also a full refresh every N steps inside a block; 0: only at block starts")
    drift: float = bounded(0.0, 0.0, 2.0, "Elastic-Cache: refresh when the watched key drifted more than this; 0: off")
    layer: int = bounded(0, 0, 10_000, "with drift: the first layer whose drift is tested")
    delay: bool = bounded(False, 0, 1, "dKV-Cache: a block start recomputes from the previous block onward")
    refresh: tuple[Refresh, ...] = field(init=False, repr=False, compare=False)
    name: ClassVar[str] = "prefix"
    kinds: ClassVar[tuple[str, ...]] = ("masked-lm",)
    suffix: ClassVar[bool] = True  # cheap steps also run the slots after the block

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layer and not self.drift:
            raise ValueError(f"{type(self).__name__}.layer applies with drift only, got layer={self.layer} alone")
        options: list[Refresh] = [Periodic(self.every)] if self.every else []
        options += [DriftRefresh(self.drift, self.layer)] if self.drift else []
        self.refresh = (*options, *[DelayedCaching()] * self.delay)

    def check_model(self, model: TextLM) -> None:
        super().check_model(model)
        n_layer = model.config.n_layer
        if self.layer >= n_layer:
            raise ValueError(f"{type(self).__name__}.layer must be in [0, {n_layer}) for this model, got {self.layer}")

    @property
    def rows_independent(self) -> bool:
        # Elastic-Cache's drift test is taken over the batch: one stale row refreshes every row.
        return not any(o.probes for o in self.refresh)

    def start(self) -> None:
        for option in self.refresh:
            option.start()

    def start_block(self, calls: Slots, lo: int, hi: int) -> Calls:
        for option in self.refresh:
            option.start_block(lo)
        yield from ()

    def logits(self, calls: Slots, lo: int, hi: int, step: int) -> Generator[Call, Reply, torch.Tensor]:
        settled = calls.settled(lo, hi)
        # Elastic-Cache watches the token the last layer attends to most.
        probe_layer = calls.n_layer - 1 if any(o.probes for o in self.refresh) else None
        if step == 0 or any(o.periodic(step) for o in self.refresh):
            first = max((o.first_pass_start() for o in self.refresh), default=0) if step == 0 else 0
            logits, probe = yield from calls.run(first, calls.end, probe_layer)
            logits = logits[:, lo - first : hi - first]
            calls.stats.refreshes += step > 0
        else:
            logits, probe = yield from calls.run(lo, calls.end if self.suffix else hi, probe_layer)
            logits = logits[:, : hi - lo]
            if any(o.stale(probe) for o in self.refresh):
                logits, probe = yield from calls.run(0, calls.end, probe_layer)
                logits = logits[:, lo:hi]
                calls.stats.refreshes += 1
        for option in self.refresh:
            option.observe(probe, lo, hi, settled)
        return logits


@register
@dataclass
class DualCache(PrefixCache):
    """Fast-dLLM's DualCache (Wu et al. 2025): cheap steps run only the block, against a stale prefix and suffix."""

    name: ClassVar[str] = "dual"
    suffix: ClassVar[bool] = False


@register
@dataclass
class BlockCache(CacheMode):
    """The exact cache of block-causal models (BD3-LM, Arriola et al. 2025; Fast-dLLM v2, Wu et al. 2025)."""

    fuse: bool = bounded(False, 0, 1, "write a finished block's K/V in the next block's first pass (Fast-dLLM v2)")
    name: ClassVar[str] = "block"
    kinds: ClassVar[tuple[str, ...]] = ("block-lm",)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._pending: tuple[int, int] | None = None  # fuse: a finished block whose clean K/V is not written yet
        self._prefilled = False  # the prompt's K/V is written (once per generation)

    def start(self) -> None:
        self._pending, self._prefilled = None, False

    def _window(self, calls: Slots, lo: int) -> tuple[int, int]:
        """The whole model block around the (sub-)block starting at lo: its queries see all of it."""
        size, g = calls.model_block, calls.gen_start
        w_lo = g + (lo - g) // size * size
        return w_lo, w_lo + size

    def start_block(self, calls: Slots, lo: int, hi: int) -> Calls:
        if not self._prefilled:  # prefill: the prompt is block 0, written once
            yield from calls.run(0, calls.gen_start)
            self._prefilled = True

    def logits(self, calls: Slots, lo: int, hi: int, step: int) -> Generator[Call, Reply, torch.Tensor]:
        w_lo, w_hi = self._window(calls, lo)
        first = self._pending[0] if self._pending else w_lo  # fuse: the finished block rides along, exactly
        self._pending = None
        logits, _ = yield from calls.run(first, w_hi)
        return logits[:, lo - first : hi - first]

    def end_block(self, calls: Slots, lo: int, hi: int) -> Calls:
        w_lo, w_hi = self._window(calls, lo)
        if hi == w_hi and hi < calls.end:  # the last block is never read again
            if self.fuse:  # Fast-dLLM v2: write the clean K/V in the next block's first pass
                self._pending = (w_lo, w_hi)
            else:  # a clean pass: the finished block's K/V, computed from its final tokens
                yield from calls.run(w_lo, w_hi)


def parse_cache(text: str) -> CacheMode:
    """'none' / 'prefix' / 'dual:every=4' / 'dual:drift=0.05,layer=1' / 'prefix:delay' / 'block:fuse' -> a mode."""
    return spec.parse(text, CACHES, "cache")
