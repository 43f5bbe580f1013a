"""The FastAPI application, built by `create_app(settings)`; nothing is created at import time."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from importlib.resources import files
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app import __version__
from app.api.auth import KeyRing
from app.api.errors import install_error_handlers
from app.api.limits import BodySizeLimit
from app.api.request_log import RequestObserver
from app.api.routes import collections, embedding, health, images, ingest, metrics, page, search, thumbnails
from app.runtime.batcher import MicroBatcher
from app.services.embedding import Embedder
from app.media.fetch import UrlFetcher
from app.media.image_ref import ImageLoader
from app.services.images import ImageService, UploadFiles
from app.ingest.jobs import JobManager
from app.ingest.service import IngestService
from app.runtime.executor import InferenceRunner, run_blocking
from app.api.metrics import Metrics
from app.model.registry import ModelRegistry
from app.services.search import SearchService
from app.settings import Settings
from app.services.thumbnails import Thumbnails
from index.db import create_db_engine
from index.errors import DataDirError
from index.store import VectorStore

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
    app_metrics: Metrics = app.state.metrics
    registry = ModelRegistry(settings, on_forward=app_metrics.observe_forward)
    runner = InferenceRunner()
    loader = ImageLoader(
        UrlFetcher(settings.url_policy()), max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
    )
    batcher = MicroBatcher(
        runner, max_batch=settings.microbatch_max_items, max_wait_ms=settings.microbatch_wait_ms,
        enabled=settings.microbatch,
    )
    embedder = Embedder(
        registry, loader, batcher, max_items=settings.max_batch, max_text_chars=settings.max_text_chars,
        text_cache_size=settings.text_cache_size,
    )
    # Migrations run here, before the first request; the indexes load or rebuild from the database.
    store = await run_blocking(open_store, settings)
    app_metrics.watch_store(store)
    jobs = JobManager()
    app.state.registry = registry
    app.state.embedder = embedder
    app.state.store = store
    app.state.search = SearchService(store=store, embedder=embedder)
    uploads = UploadFiles(settings.uploads_dir)
    app.state.images = ImageService(store=store, embedder=embedder, uploads=uploads)
    app.state.thumbnails = Thumbnails(
        directory=settings.data_dir / "thumbnails", store=store, uploads=uploads, fetcher=loader.fetcher
    )
    app.state.jobs = jobs
    app.state.ingest = IngestService(
        store=store, registry=registry, fetcher=loader.fetcher, settings=settings, jobs=jobs,
        on_batch=app_metrics.observe_ingest,
    )
    # Loads in the background so /health answers at once and /ready turns 200 when done.
    loading = asyncio.create_task(run_blocking(registry.load_default))
    try:
        yield
    finally:
        # A load still running cannot be interrupted inside its thread; stop waiting for it.
        loading.cancel()
        jobs.close()
        await batcher.close()
        runner.close()
        app_metrics.watch_store(None)
        store.close()


def check_data_dir(path: Path) -> None:
    """Fail at start-up, with the reason, rather than at the first write."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise DataDirError(f"The data dir {path} is not a writable folder ({exc.strerror or exc}); set PE_SEARCH_DATA_DIR.") from exc


def open_store(settings: Settings) -> VectorStore:
    check_data_dir(settings.data_dir)
    engine = create_db_engine(settings.db_url)
    return VectorStore(
        engine=engine, index_dir=settings.index_dir, memory_budget=settings.index_memory_budget, index_mmap=settings.index_mmap,
        read_only=settings.read_only,
    ).open()


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
    app.include_router(ingest.router)
    app.include_router(page.router)
    app.mount("/static", StaticFiles(directory=str(files("app") / "static")), name="static")
    return app
