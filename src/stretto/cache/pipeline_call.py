"""A diffusers pipeline's call, wrapped so the cache starts fresh at every call and keys steps on its scheduler.

Python looks `__call__` up on the class, so the pipeline object's class is swapped for a subclass of the
same name whose `__call__` resets the cache (state and records: `summary(pipe)` then reports the last call)
and runs the original. While a call runs, the scheduler's `set_timesteps` is wrapped on the instance: once
the pipeline has set its schedule, `scheduler.timesteps`, as the model will see them (Flux pipelines
pass t / 1000, Lumina2's 1 - t / 1000, see families.py), become the cache's step schedule, and a new
denoising loop (a pipeline that calls `set_timesteps` again for another stage) starts from fresh state.
`detach` undoes both. Nothing depends on model methods such as `_reset_stateful_cache`, which many
diffusers transformers lack.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class Resettable(Protocol):
    """What the wrapper drives: a denoiser's cache, its full reset, its per-loop reset and its timestep scale."""

    def reset(self) -> None: ...

    def reset_state(self, keys: torch.Tensor | None = None, evaluated: bool = False) -> None: ...

    def schedule_keys(self, timesteps: torch.Tensor) -> torch.Tensor: ...


class PipelineCall:
    """The wrapped `__call__` and `scheduler.set_timesteps` of one pipeline object, and their removal."""

    def __init__(self, pipe: Any, handles: list[Resettable]):
        self.pipe, self.handles = pipe, handles  # one per denoiser (Wan 2.2 has two experts)
        self.original_class = type(pipe)
        self.inside = False
        self.scheduler = getattr(pipe, "scheduler", None)

    def attach(self) -> None:
        """Swap in the wrapping subclass and wrap the scheduler's `set_timesteps`."""
        cls, wrapper = self.original_class, self

        def __call__(pipe, *args, **kwargs):
            for handle in wrapper.handles:
                handle.reset()
            wrapper.inside = True
            try:
                return cls.__call__(pipe, *args, **kwargs)
            finally:
                wrapper.inside = False

        self.pipe.__class__ = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__})
        set_timesteps = getattr(self.scheduler, "set_timesteps", None)
        if callable(set_timesteps):

            def schedule(*args, **kwargs):
                out = set_timesteps(*args, **kwargs)
                timesteps = getattr(wrapper.scheduler, "timesteps", None)
                if wrapper.inside and timesteps is not None:
                    for handle in wrapper.handles:
                        keys = handle.schedule_keys(torch.as_tensor(timesteps, dtype=torch.float64))
                        handle.reset_state(keys.float(), evaluated=True)
                return out

            self.scheduler.__dict__["set_timesteps"] = schedule

    def detach(self) -> None:
        """Restore the pipeline's own class and the scheduler's own `set_timesteps`."""
        self.pipe.__class__ = self.original_class
        if self.scheduler is not None:
            self.scheduler.__dict__.pop("set_timesteps", None)
