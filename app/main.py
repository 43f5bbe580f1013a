"""The FastAPI application, built by `create_app(settings)`; nothing is created at import time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI

from app import __version__
from app.api.errors import install_error_handlers
from app.api.routes import embedding, health
from app.embedder import Embedder
from app.fetch import UrlFetcher
from app.image_input import ImageLoader
from app.inference import InferenceRunner, run_blocking
from app.registry import ModelRegistry
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
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    if settings.random_weights:
        log.warning("PE_SEARCH_WEIGHTS=random: serving RANDOM weights; embeddings carry no meaning.")
    registry = ModelRegistry(settings)
    runner = InferenceRunner()
    app.state.registry = registry
    app.state.embedder = Embedder(
        registry, ImageLoader(UrlFetcher(settings.url_policy())), runner, max_items=settings.max_batch
    )
    # Loads in the background so /health answers at once and /ready turns 200 when done.
    loading = asyncio.create_task(run_blocking(registry.load_default))
    try:
        yield
    finally:
        # A load still running cannot be interrupted inside its thread; stop waiting for it.
        loading.cancel()
        runner.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(
        title="pe-search",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings or Settings()
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(embedding.router)
    return app
