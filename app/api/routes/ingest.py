"""Server-side ingest jobs over folders, manifests and object-storage prefixes under PE_SEARCH_INGEST_ROOTS."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.auth import ReadAccess, WriteAccess
from app.api.deps import IngestDep, JobsDep
from app.api.ingest_schemas import IngestJobOut, IngestRequest
from app.api.schemas import ErrorResponse
from app.runtime.executor import run_blocking

router = APIRouter(
    prefix="/ingest", tags=["ingest"], responses={403: {"model": ErrorResponse}, 404: {"model": ErrorResponse}}
)


@router.post(
    "",
    dependencies=[WriteAccess],
    response_model=IngestJobOut,
    status_code=202,
    summary="Queue an ingest of a server-side folder, manifest or object-storage prefix",
    description="Jobs are recorded in the database, run one at a time in the order queued, and resumed after a "
    "restart. An s3:// (gs://, az://) source lists the prefix; its credentials come from the server's environment.",
)
async def start_ingest(body: IngestRequest, ingest: IngestDep) -> IngestJobOut:
    job = await run_blocking(
        lambda: ingest.start(
            source=body.source,
            kind=body.kind,
            collection=body.collection,
            column=body.column,
            model=body.perception_encoder_version_id,
            near_duplicates=body.near_duplicates,
            near_threshold=body.near_threshold,
        )
    )
    return IngestJobOut.of(job)


@router.get(
    "", dependencies=[ReadAccess], response_model=list[IngestJobOut], summary="Recent ingest jobs, newest first"
)
async def list_jobs(jobs: JobsDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[IngestJobOut]:
    return [IngestJobOut.of(job) for job in await run_blocking(jobs.recent, limit)]


@router.get(
    "/{job_id}",
    dependencies=[ReadAccess],
    response_model=IngestJobOut,
    summary="An ingest job's status, progress and summary",
)
async def get_job(job_id: str, jobs: JobsDep) -> IngestJobOut:
    return IngestJobOut.of(await run_blocking(jobs.get, job_id))


@router.delete(
    "/{job_id}",
    dependencies=[WriteAccess],
    response_model=IngestJobOut,
    responses={409: {"model": ErrorResponse}},
    summary="Cancel an ingest job",
    description="A queued job is cancelled at once; a running one stops after its current batch (the batches "
    "it committed stay). 409 if it has already ended.",
)
async def cancel_job(job_id: str, jobs: JobsDep) -> IngestJobOut:
    return IngestJobOut.of(await run_blocking(jobs.cancel, job_id))
