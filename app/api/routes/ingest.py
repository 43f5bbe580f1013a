"""Server-side ingest jobs over folders and manifests under PE_SEARCH_INGEST_ROOTS."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.auth import ReadAccess, WriteAccess
from app.api.deps import IngestDep, JobsDep
from app.api.schemas import ErrorResponse
from app.api.store_schemas import IngestJobOut, IngestRequest

router = APIRouter(
    prefix="/ingest", tags=["ingest"], responses={403: {"model": ErrorResponse}, 404: {"model": ErrorResponse}}
)


@router.post(
    "",
    dependencies=[WriteAccess],
    response_model=IngestJobOut,
    status_code=202,
    summary="Start ingesting a server-side folder or manifest",
)
async def start_ingest(body: IngestRequest, ingest: IngestDep) -> IngestJobOut:
    job = ingest.start(
        source=body.source,
        kind=body.kind,
        collection=body.collection,
        column=body.column,
        model=body.perception_encoder_version_id,
        near_duplicates=body.near_duplicates,
        near_threshold=body.near_threshold,
    )
    return IngestJobOut(**job.to_dict())


@router.get(
    "/{job_id}",
    dependencies=[ReadAccess],
    response_model=IngestJobOut,
    summary="An ingest job's status, progress and summary",
)
async def get_job(job_id: str, jobs: JobsDep) -> IngestJobOut:
    return IngestJobOut(**jobs.get(job_id).to_dict())
