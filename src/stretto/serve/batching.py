"""Dynamic batching of image requests: those that arrive together and share their settings run as one call.

The first waiting request waits `window_s` for others; then the oldest request's group (same model, steps,
sampler, guidance, shift and cache policy) is taken, up to `max_images` images, and run as one batch while
newer requests gather for the next. Settings must match within a batch: the sampler's schedule, the CFG scale
and the feature-cache policy are one per model call (the cache keeps per-row and per-branch *state*, but one
policy object decides for the whole call).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from stretto.serve.schemas import ImageRequest
from stretto.serve.worker import Admission


@dataclass
class ImageJob:
    """One admitted image request: its settings, where its answer goes, and whether its client still wants it."""

    request: ImageRequest
    model: str
    answer: asyncio.Future
    cancelled: threading.Event = field(default_factory=threading.Event)
    arrived: float = field(default_factory=time.perf_counter)

    @property
    def key(self) -> tuple:
        r = self.request
        return (self.model, r.steps, r.sampler, r.guidance, r.shift, r.cache)


class ImageBatcher:
    """The waiting image requests and the loop that forms batches from them."""

    def __init__(
        self,
        admission: Admission,
        run: Callable[[list[ImageJob]], Awaitable[None]],
        max_images: int,
        window_s: float,
    ):
        self.admission, self.run, self.max_images, self.window_s = admission, run, max_images, window_s
        self.waiting: list[ImageJob] = []
        self._arrived = asyncio.Event()

    def submit(self, job: ImageJob) -> None:
        """Admit a request (QueueFull if the queue is full) and wake the loop."""
        self.admission.enter()
        self.waiting.append(job)
        self._arrived.set()

    def withdraw(self, job: ImageJob) -> None:
        """A request cancelled before its batch started leaves the queue."""
        if job in self.waiting:
            self.waiting.remove(job)
            self.admission.leave()

    def take(self) -> list[ImageJob]:
        """The oldest request's group, in arrival order, up to max_images images."""
        if not self.waiting:
            return []
        key, batch, images = self.waiting[0].key, [], 0
        for job in list(self.waiting):
            if job.key == key and images + job.request.n <= self.max_images:
                batch.append(job)
                images += job.request.n
                self.waiting.remove(job)
                self.admission.leave()
        return batch

    async def loop(self) -> None:
        """Form and run batches forever (the app's lifespan cancels it)."""
        while True:
            await self._arrived.wait()
            if self.window_s and sum(j.request.n for j in self.waiting) < self.max_images:
                await asyncio.sleep(self.window_s)  # let requests that arrive together join
            batch = self.take()
            if not self.waiting:
                self._arrived.clear()
            if batch:
                await self.run(batch)
