"""Replicas on Ray Serve: the same FastAPI app (routes, batching, limits, metrics) as a Ray Serve deployment.

Each replica builds its own app from the settings when it starts (`__serve_build_asgi_app__`), so the app's
lifespan (models, model thread, batcher) runs inside the replica and nothing unpicklable crosses to Ray. Ray's
proxy takes the HTTP and WebSocket connections and spreads them over the replicas; batching and the bounded queue
are per replica. A fixed count, or autoscaling between bounds on the requests each replica has in flight.
"""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass

from ray import serve

from stretto.serve.app import create_app
from stretto.serve.settings import ServeSettings


@dataclass
class ReplicaSettings:
    """How many replicas: `replicas` at start, autoscaled within [min_replicas, max_replicas] when they differ."""

    replicas: int = 1
    min_replicas: int | None = None  # None: `replicas`
    max_replicas: int | None = None  # None: `replicas`
    target_ongoing_requests: float = 4.0  # requests in flight per replica the autoscaler aims for
    replica_cpus: float = 1.0  # CPUs Ray reserves per replica

    def check(self) -> None:
        """Raise ValueError naming the field when a bound is out of range or the bounds do not hold `replicas`."""
        low, high = self.bounds
        for name, value in (("replicas", self.replicas), ("min_replicas", low), ("max_replicas", high)):
            if not isinstance(value, int) or not 0 <= value <= 1024:
                raise ValueError(f"{name} must be an integer in [0, 1024], got {value!r}")
        if not low <= self.replicas <= high or high < 1:
            raise ValueError(f"replicas ({self.replicas}) must lie in [min_replicas, max_replicas] = [{low}, {high}]"
                             " with max_replicas >= 1")  # fmt: skip
        if not 0 < self.replica_cpus <= 1024:
            raise ValueError(f"replica_cpus must be in (0, 1024], got {self.replica_cpus}")
        if not self.target_ongoing_requests > 0:
            raise ValueError(f"target_ongoing_requests must be > 0, got {self.target_ongoing_requests}")

    @property
    def bounds(self) -> tuple[int, int]:
        return (self.replicas if self.min_replicas is None else self.min_replicas,
                self.replicas if self.max_replicas is None else self.max_replicas)  # fmt: skip

    def options(self) -> dict:
        """`serve.deployment` options: a fixed count, or an autoscaling config when the bounds differ."""
        low, high = self.bounds
        options = {"ray_actor_options": {"num_cpus": self.replica_cpus}}
        if low == high:
            return {**options, "num_replicas": self.replicas}
        autoscaling = {"min_replicas": low, "max_replicas": high, "initial_replicas": self.replicas,
                       "target_ongoing_requests": self.target_ongoing_requests}  # fmt: skip
        return {**options, "autoscaling_config": autoscaling}


@serve.ingress()
class StrettoReplica:
    """One replica: `stretto serve`'s app, built from the settings inside the replica's process."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings

    def __serve_build_asgi_app__(self):
        return create_app(self.settings)


def application(settings: ServeSettings, replicas: ReplicaSettings):
    """The bound Ray Serve application, ready for `serve.run`."""
    settings.check()
    replicas.check()
    # The limit per replica: Ray queues more at its proxy, our admission answers 429 past queue_size.
    limit = settings.queue_size + settings.max_streams + settings.max_batch
    deployment = serve.deployment(StrettoReplica, name="stretto", max_ongoing_requests=limit, **replicas.options())
    return deployment.bind(settings)


def run(settings: ServeSettings, replicas: ReplicaSettings, num_cpus: int | None = None) -> None:
    """Start local Ray (or join RAY_ADDRESS's cluster), serve on settings.host:port until interrupted."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(application(settings, replicas), name="stretto", route_prefix="/")
    # SIGTERM (a service manager, `kill`) ends the wait like Ctrl-C, so the replicas and local Ray shut down.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        while True:
            time.sleep(3600)
    finally:
        serve.shutdown()
