"""`stretto serve`: the pipelines over HTTP and WebSocket (FastAPI on uvicorn), with a web page at `/`.

The files: `app` assembles the routes, middleware and state; `images` (`POST /v1/images/generations`, fed by
`batching`), `completions` (`POST /v1/completions`, server-sent events built by `unmasking`) and `world`
(`WS /v1/world`) are the endpoints; `worker` runs model work on one thread beside the event loop and bounds
the queue; `waiting` cancels work whose client left or timed out; `schemas` and `errors` check requests and
shape refusals; `limits` caps body sizes; `metrics` feeds `/metrics`; `registry` holds the models;
`settings` is what the operator sets; `server` runs it on uvicorn, `replicas` as a Ray Serve deployment;
`page/` is the web page.
"""

from stretto.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]


def create_app(settings: ServeSettings):
    """The FastAPI app (imported here, not at package import: `stretto --help` must not need the serve extra)."""
    from stretto.serve.app import create_app as _create_app

    return _create_app(settings)
