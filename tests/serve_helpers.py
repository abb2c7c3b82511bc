"""A real `stretto serve` for tests: uvicorn on a free loopback port in a thread, and a gate to hold a model."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn

from stretto.serve import ServeSettings
from stretto.serve.server import uvicorn_config

WAIT_S = 60.0  # the longest any wait-until below waits; reaching it fails the test, a pass never waits it out


@contextmanager
def served(**settings) -> Iterator[tuple[str, object]]:
    """(base URL, app) of a server started with these ServeSettings; stopped on exit."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn_config(ServeSettings(port=port, **{"torch_threads": 1, **settings}), log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), "the server to start")
    assert server.started, "the server did not start"
    try:
        yield f"http://127.0.0.1:{port}", config.app
    finally:
        server.should_exit = True
        thread.join(WAIT_S)
        sock.close()


def wait_until(condition, what: str) -> None:
    """Poll until condition() is true; fail naming `what` after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def metric(base: str, line_start: str) -> float:
    """The value of the first /metrics sample line that starts with `line_start` (0 if absent)."""
    for line in httpx.get(base + "/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def idle(app) -> None:
    """Return once the model thread has finished everything queued before this call."""
    app.state.worker.executor.submit(lambda: None).result(WAIT_S)


class ModelGate:
    """Holds a model's calls: the first `free` pass, later ones wait until `release` (a forward pre-hook)."""

    def __init__(self, model, free: int = 0):
        self.free, self.calls = free, 0
        self.entered = threading.Event()  # a call is waiting at the gate
        self.opened = threading.Event()
        self.handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, module, args) -> None:
        self.calls += 1
        if self.calls > self.free:
            self.entered.set()
            assert self.opened.wait(WAIT_S), "the test never released the gate"

    def release(self) -> None:
        """Let every held and later call through (they are still counted until the gate is removed)."""
        self.opened.set()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.release()
        self.handle.remove()
