"""Dependencies: the objects `create_app` and the lifespan put on `app.state`, as typed aliases for routes.

They are `async def` although they only read attributes: FastAPI runs a plain `def` dependency in
its thread pool, and a search's handful of them cost a thread hop each (milliseconds on 2 busy
cores, docs/BENCHMARKS.md).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.api.keys import KeyRing
from app.api.metrics import Metrics
from app.ingest.jobs import JobManager
from app.ingest.service import IngestService
from app.model.registry import ModelRegistry
from app.services.duplicates import DuplicateService
from app.services.embedding import Embedder
from app.services.images import ImageService
from app.services.search import SearchService
from app.services.thumbnails import Thumbnails
from app.services.wiring import Services
from app.settings import Settings
from index.store import VectorStore


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_keys(request: Request) -> KeyRing:
    return request.app.state.keys


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def _services(request: Request) -> Services:
    return request.app.state.services


async def get_embedder(request: Request) -> Embedder:
    return _services(request).embedder


async def get_registry(request: Request) -> ModelRegistry:
    return _services(request).registry


async def get_store(request: Request) -> VectorStore:
    return _services(request).store


async def get_search(request: Request) -> SearchService:
    return _services(request).search


async def get_duplicates(request: Request) -> DuplicateService:
    return _services(request).duplicates


async def get_images(request: Request) -> ImageService:
    return _services(request).images


async def get_jobs(request: Request) -> JobManager:
    return _services(request).jobs


async def get_thumbnails(request: Request) -> Thumbnails:
    return _services(request).thumbnails


async def get_ingest(request: Request) -> IngestService:
    return _services(request).ingest


SettingsDep = Annotated[Settings, Depends(get_settings)]
KeysDep = Annotated[KeyRing, Depends(get_keys)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
StoreDep = Annotated[VectorStore, Depends(get_store)]
SearchDep = Annotated[SearchService, Depends(get_search)]
DuplicatesDep = Annotated[DuplicateService, Depends(get_duplicates)]
ImagesDep = Annotated[ImageService, Depends(get_images)]
JobsDep = Annotated[JobManager, Depends(get_jobs)]
IngestDep = Annotated[IngestService, Depends(get_ingest)]
ThumbnailsDep = Annotated[Thumbnails, Depends(get_thumbnails)]
EmbedderDep = Annotated[Embedder, Depends(get_embedder)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
