"""Server-side ingest jobs over folders and manifests under PE_SEARCH_INGEST_ROOTS."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter

from app.api.deps import EmbedderDep, JobsDep, ReadAccess, SettingsDep, StoreDep, WriteAccess
from app.api.schemas import ErrorResponse
from app.api.store_schemas import IngestJobOut, IngestRequest
from app.errors import ForbiddenPathError, InvalidInputError
from app.ingest.pipeline import Ingestor
from app.ingest.sources import folder_items, manifest_items, url_list_items

router = APIRouter(prefix="/ingest", tags=["ingest"], responses={403: {"model": ErrorResponse}, 404: {"model": ErrorResponse}})


def allowed_path(raw: str, roots: tuple[Path, ...]) -> Path:
    """The resolved path, if it lies under one of the roots (no `..` or symlink escapes)."""
    path = Path(raw).resolve()
    if not any(path.is_relative_to(root) for root in roots):
        raise ForbiddenPathError(raw)
    return path


@router.post("", dependencies=[WriteAccess], response_model=IngestJobOut, status_code=202, summary="Start ingesting a server-side folder or manifest")
async def start_ingest(body: IngestRequest, jobs: JobsDep, store: StoreDep, embedder: EmbedderDep, settings: SettingsDep) -> IngestJobOut:
    roots = settings.ingest_root_paths
    path = allowed_path(body.source, roots)
    if not path.exists():
        raise InvalidInputError(f"{body.source} does not exist.")
    if body.kind == "folder":
        items = lambda: folder_items(path)  # noqa: E731 - read lazily, in the job's thread
    elif body.kind == "manifest":
        items = lambda: manifest_items(path, body.column, allowed_roots=roots)  # noqa: E731
    else:
        items = lambda: url_list_items(path)  # noqa: E731

    def ingestor() -> Ingestor:
        return Ingestor(
            store=store,
            encoder=embedder.registry.get(body.perception_encoder_version_id or store.model_of(body.collection)),
            fetcher=embedder.loader.fetcher,
            batch_size=settings.ingest_batch,
            workers=settings.ingest_workers,
        )

    job = jobs.submit(source=str(path), collection=body.collection, items=items, ingestor=ingestor)
    return IngestJobOut(**job.to_dict())


@router.get("/{job_id}", dependencies=[ReadAccess], response_model=IngestJobOut, summary="An ingest job's status, progress and summary")
async def get_job(job_id: str, jobs: JobsDep) -> IngestJobOut:
    return IngestJobOut(**jobs.get(job_id).to_dict())
