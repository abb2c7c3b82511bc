"""Where model work runs: one thread beside the event loop, a bounded count of waiting requests, and cancellation.

One thread, not one per request: torch already spreads each call over its intra-op threads, and a model (with
its feature-cache hooks) must never run two calls at once. Requests queue here in arrival order.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from torch import nn

from stretto.serve.errors import QueueFull


class Cancelled(Exception):
    """The client went away or timed out: raised inside the model's next call, so the work stops there."""


class Admission:
    """The bounded queue: requests admitted and not yet running. Past `size`, `enter` raises QueueFull (429)."""

    def __init__(self, size: int, retry_after_s: int, on_change: Callable[[int], None] = lambda depth: None):
        self.size, self.retry_after_s, self.on_change = size, retry_after_s, on_change
        self.depth = 0
        self._lock = threading.Lock()  # `leave` is also called from the model thread

    def enter(self) -> None:
        with self._lock:
            if self.depth >= self.size:
                raise QueueFull(self.depth, self.retry_after_s)
            self.depth += 1
            self.on_change(self.depth)

    def leave(self) -> None:
        with self._lock:
            self.depth -= 1
            self.on_change(self.depth)


class ModelWorker:
    """The single thread all model work runs on; `run` awaits a function there without blocking the loop."""

    def __init__(self):
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stretto-model")

    async def run(self, fn: Callable, *args):
        return await asyncio.wrap_future(self.executor.submit(fn, *args))

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


@contextmanager
def stop_when(model: nn.Module, stop: Callable[[], bool]) -> Iterator[None]:
    """Raise Cancelled at the model's next call once `stop()` is true (a forward pre-hook, removed on exit)."""

    def check(module, args):
        if stop():
            raise Cancelled()

    handle = model.register_forward_pre_hook(check)
    try:
        yield
    finally:
        handle.remove()
