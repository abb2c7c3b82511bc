"""What the operator sets for `stretto serve`: address, models, queue, batching, timeouts and limits."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

IMAGE_KIND = "shapes-flux"
TEXT_KINDS = ("masked-lm", "block-lm")
WORLD_KIND = "world-dit"
DEFAULT_MODELS = ("shapes-flux", "text-llada", "world-sf")
MIB = 1024 * 1024


def usable_cores() -> int:
    """The cores this process may run on (the affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class ServeSettings:
    """The server's settings; `check` raises ValueError naming the field, the bad value and the allowed range."""

    host: str = "127.0.0.1"
    port: int = 8000
    models: tuple[str, ...] = DEFAULT_MODELS  # loaded at start; requests may name only these (or allowed folders)
    device: str = "cpu"
    queue_size: int = 32  # requests admitted but not yet running; one more is answered 429
    max_batch: int = 16  # images in one batched model call
    batch_window_ms: float = 10.0  # how long the first waiting image request waits for others to join its batch
    timeout_s: float = 60.0  # a request not answered by then is cancelled and answered 504
    max_body_bytes: int = 1 * MIB  # larger request bodies (and WebSocket messages) are refused with 413
    allow_model_dirs: tuple[str, ...] = ()  # folders whose checkpoints clients may name; none by default
    torch_threads: int | None = field(default_factory=lambda: usable_cores())  # None: leave torch's setting
    max_streams: int = 4  # world streams open at once
    idle_s: float = 60.0  # a world socket that sends no action for this long is closed
    max_images: int = 8  # `n` of one image request
    max_steps: int = 50  # sampler steps of one image request
    quality: bool = True  # score every image's prompt adherence with the shipped shapes classifier
    retry_after_s: int = 1  # the Retry-After of a 429

    def check(self) -> None:
        """Raise ValueError on the first setting outside its range."""
        ranges = {
            "port": (0, 65535),
            "queue_size": (1, 100_000),
            "max_batch": (1, 4096),
            "max_streams": (1, 1024),
            "max_images": (1, 4096),
            "max_steps": (1, 10_000),
            "max_body_bytes": (1024, 1024 * MIB),
            "retry_after_s": (1, 3600),
        }
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
        for name, low in (("batch_window_ms", 0.0), ("timeout_s", 1e-3), ("idle_s", 1e-3)):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not low <= value <= 86_400:
                raise ValueError(f"{name} must be a number in [{low:g}, 86400], got {value!r}")
        if self.torch_threads is not None and not 1 <= self.torch_threads <= 1024:
            raise ValueError(f"torch_threads must be in [1, 1024], got {self.torch_threads}")
        if self.max_images > self.max_batch:
            raise ValueError(f"max_images ({self.max_images}) must be <= max_batch ({self.max_batch})")
        if not self.models:
            raise ValueError("models: give at least one model to load")
