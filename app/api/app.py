"""The FastAPI application, built by `create_app(settings)`; nothing is created at import time.

The lifespan builds the services (`app.services.wiring`) and puts them on `app.state.services`,
where `app.api.deps` reads them for the routes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app import __version__
from app.api.errors import install_error_handlers
from app.api.keys import KeyRing
from app.api.limits import BodySizeLimit
from app.api.metrics import Metrics
from app.api.request_log import RequestObserver
from app.api.routes import (
    collections,
    duplicates,
    embedding,
    health,
    images,
    ingest,
    metrics,
    page,
    search,
    thumbnails,
)
from app.runtime.executor import run_blocking
from app.services.wiring import build_services
from app.settings import Settings

log = logging.getLogger(__name__)

DESCRIPTION = """
Image embeddings and search on Meta's Perception Encoder (PE-Core).

The `perception_encoder` routes are a drop-in for Roboflow Inference's: point an
existing client at this server and it works unchanged. `classify` is our own
addition (zero-shot class probabilities).
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    if settings.random_weights:
        log.warning("PE_SEARCH_WEIGHTS=random: serving RANDOM weights; embeddings carry no meaning.")
    metrics: Metrics = app.state.metrics
    # Migrations run here, before the first request; the indexes load or rebuild from the database.
    services = await run_blocking(
        build_services, settings, on_forward=metrics.observe_forward, on_batch=metrics.observe_ingest
    )
    metrics.watch_store(services.store)
    app.state.services = services
    services.start_jobs()
    # Loads in the background so /health answers at once and /ready turns 200 when done.
    loading = asyncio.create_task(run_blocking(services.registry.load_default))
    try:
        yield
    finally:
        # A load still running cannot be interrupted inside its thread; stop waiting for it.
        loading.cancel()
        metrics.watch_store(None)
        await services.aclose()


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(
        title="pe-search",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings = settings or Settings()
    app.state.keys = KeyRing.from_settings(settings)
    app.state.metrics = Metrics()
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestObserver, metrics=app.state.metrics)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(embedding.router)
    app.include_router(search.router)
    app.include_router(images.router)
    app.include_router(thumbnails.router)
    app.include_router(collections.router)
    app.include_router(duplicates.router)
    app.include_router(ingest.router)
    app.include_router(page.router)
    app.mount("/static", StaticFiles(directory=str(files("app") / "static")), name="static")
    return app
