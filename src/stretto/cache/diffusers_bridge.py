"""The bridge to diffusers' own cache hooks, so `apply(pipe, policy)` works without touching the pipeline.

diffusers models with its `CacheMixin` have a `cache_context(name)` that its pipelines enter around
each model call ("cond" / "uncond", sometimes with the step_index and sigma), and a
`_reset_stateful_cache()` that a pipeline runs when its call ends. The bridge wraps both on the model
instance: `cache_context` also names the branch of the call (and its step) for the cache, and
`_reset_stateful_cache` also drops the cache's state (its records stay readable until the next model call).
The sigma a pipeline passes is ignored: it is the scheduler's (Wan: 0..1), not the model's timestep scale
(0..1000) the cache keys on. Models without these methods are left alone.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Protocol

from torch import nn

from stretto.cache.step_context import StepContext


class Bridged(Protocol):
    """What the bridge drives: the cache's current step context and its reset."""

    context: StepContext | None

    def reset_state(self, keys=None, evaluated: bool = False, stale: bool = False) -> None: ...


class DiffusersBridge:
    """The wrapped `cache_context` / `_reset_stateful_cache` of one diffusers model, and their removal."""

    def __init__(self, owner: nn.Module, handle: Bridged):
        self.owner = owner
        self.handle = handle
        self.bridged: list[str] = []

    def attach(self) -> None:
        """Wrap the model's `cache_context` and `_reset_stateful_cache`, where it has them."""
        owner, handle = self.owner, self.handle
        context, reset = getattr(owner, "cache_context", None), getattr(owner, "_reset_stateful_cache", None)
        self.bridged = []
        if callable(context):

            @contextmanager
            def cache_context(name: str, **kwargs):
                step_index, total = kwargs.get("step_index"), kwargs.get("num_inference_steps")
                final = None if step_index is None or not total else step_index == total - 1
                ctx = StepContext(None, (name,), step_index, final)
                previous, handle.context = handle.context, ctx
                try:
                    with context(name, **kwargs):
                        yield
                finally:
                    handle.context = previous

            owner.__dict__["cache_context"] = cache_context
            self.bridged.append("cache_context")
        if callable(reset):

            def reset_stateful_cache(*args, **kwargs):
                handle.reset_state(stale=True)
                return reset(*args, **kwargs)

            owner.__dict__["_reset_stateful_cache"] = reset_stateful_cache
            self.bridged.append("_reset_stateful_cache")

    def detach(self) -> None:
        """Drop the wrappers: the model's own methods show through again."""
        for name in self.bridged:
            del self.owner.__dict__[name]
        self.bridged = []
