"""Running the app on uvicorn with the operator's limits."""

from __future__ import annotations

import uvicorn

from stretto.serve.app import create_app
from stretto.serve.settings import ServeSettings


def uvicorn_config(settings: ServeSettings, log_level: str = "info", **overrides) -> uvicorn.Config:
    """uvicorn's config for the app: address, WebSocket message limit, a short keep-alive."""
    options = dict(host=settings.host, port=settings.port, ws_max_size=settings.max_body_bytes,
                   log_level=log_level, timeout_keep_alive=5, timeout_graceful_shutdown=5)  # fmt: skip
    return uvicorn.Config(create_app(settings), **{**options, **overrides})


def run(settings: ServeSettings, log_level: str = "info") -> None:
    """Serve until interrupted."""
    uvicorn.Server(uvicorn_config(settings, log_level)).run()
