"""The FastAPI app of `stretto serve`: routes, middleware, and the state its lifespan builds and tears down."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stretto import __version__
from stretto.cache import POLICIES
from stretto.sampling import SAMPLERS
from stretto.serve import completions, images, world
from stretto.serve.batching import ImageBatcher
from stretto.serve.errors import install_error_handlers
from stretto.serve.limits import BodyLimit
from stretto.serve.metrics import Metrics, RequestMetrics
from stretto.serve.registry import ModelRegistry
from stretto.serve.settings import IMAGE_KIND, ServeSettings
from stretto.serve.worker import Admission, ModelWorker

PAGE = Path(__file__).parent / "page"


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    """The app; its lifespan loads the models and starts the model thread and the image batcher."""
    settings = settings or ServeSettings()
    settings.check()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = app.state
        if settings.torch_threads is not None:
            torch.set_num_threads(settings.torch_threads)
        state.worker = ModelWorker()
        state.registry = ModelRegistry(settings.device, settings.allow_model_dirs)
        for name in settings.models:
            await state.worker.run(state.registry.load, name)
        has_images = bool(state.registry.names((IMAGE_KIND,)))
        state.classifier = await state.worker.run(images.load_classifier) if settings.quality and has_images else None
        state.admission = Admission(settings.queue_size, settings.retry_after_s, metrics.queue_depth.set)
        state.batcher = ImageBatcher(
            state.admission, images.batch_runner(app), settings.max_batch, settings.batch_window_ms / 1000
        )
        state.streams = {}
        metrics.kv_bytes.set_function(lambda: sum(s.kv_bytes for s in state.streams.values()))
        batching = asyncio.ensure_future(state.batcher.loop())
        try:
            yield
        finally:
            batching.cancel()
            state.worker.shutdown()

    app = FastAPI(title="stretto", version=__version__, lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)  # outermost: it also counts the 413s
    app.include_router(images.router)
    app.include_router(completions.router)
    app.include_router(world.router)
    app.mount("/static", StaticFiles(directory=PAGE), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(PAGE / "index.html")

    @app.get("/health")
    async def health(request: Request) -> dict:
        """Liveness, the models held, the queue and the open streams."""
        state = request.app.state
        models = {name: model.kind for name, model in state.registry.models.items()}
        return {"status": "ok", "models": models, "queue_depth": state.admission.depth, "streams": len(state.streams)}

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        """Prometheus text: requests, latencies, queue depth, batch sizes, model calls, streams."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        """The models served (OpenAI's list shape) and the samplers and cache policies requests may name."""
        state = request.app.state
        data = [{"id": n, "object": "model", "owned_by": "stretto", "kind": m.kind, **state.registry.text_facts(n)}
                for n, m in state.registry.models.items()]  # fmt: skip
        return {"object": "list", "data": data, "samplers": list(SAMPLERS), "cache_policies": sorted(POLICIES)}

    return app
