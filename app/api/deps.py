"""Dependencies: the objects the app's lifespan put on `app.state`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.api.auth import require

from app.services.embedding import Embedder
from app.services.images import ImageService
from app.ingest.jobs import JobManager
from app.ingest.service import IngestService
from app.model.registry import ModelRegistry
from app.services.search import SearchService
from app.settings import Settings
from app.services.thumbnails import Thumbnails
from index.store import VectorStore


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_embedder(request: Request) -> Embedder:
    return request.app.state.embedder


def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


def get_store(request: Request) -> VectorStore:
    return request.app.state.store


def get_search(request: Request) -> SearchService:
    return request.app.state.search


def get_images(request: Request) -> ImageService:
    return request.app.state.images


def get_jobs(request: Request) -> JobManager:
    return request.app.state.jobs


def get_thumbnails(request: Request) -> Thumbnails:
    return request.app.state.thumbnails


def get_ingest(request: Request) -> IngestService:
    return request.app.state.ingest


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[VectorStore, Depends(get_store)]
SearchDep = Annotated[SearchService, Depends(get_search)]
ImagesDep = Annotated[ImageService, Depends(get_images)]
JobsDep = Annotated[JobManager, Depends(get_jobs)]
IngestDep = Annotated[IngestService, Depends(get_ingest)]
ThumbnailsDep = Annotated[Thumbnails, Depends(get_thumbnails)]
EmbedderDep = Annotated[Embedder, Depends(get_embedder)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]


ReadAccess = Depends(require("read"))
WriteAccess = Depends(require("write"))
