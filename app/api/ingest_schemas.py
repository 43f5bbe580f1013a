"""Request and response bodies of the ingest-job routes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.api.store_schemas import CollectionName, no_nul
from index.job_records import JobRecord


class IngestRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"source": "/srv/photos", "kind": "folder", "collection": "photos"}]}
    )

    source: Annotated[str, AfterValidator(no_nul)] = Field(
        description="A server-side folder or manifest, or an object-storage prefix (s3://bucket/prefix, gs://, "
        "az://), under PE_SEARCH_INGEST_ROOTS. Credentials come from the server's environment, never the request."
    )
    kind: Literal["folder", "manifest", "urls"] = "folder"
    collection: CollectionName = "default"
    column: str | None = Field(default=None, description="Manifest column holding the path or URL")
    perception_encoder_version_id: str | None = None
    near_duplicates: Literal["warn", "skip"] | None = Field(
        default=None, description="Check new images against the collection: warn (add, report) or skip them"
    )
    near_threshold: float | None = Field(default=None, gt=0, le=1, description="Default PE_SEARCH_DUPLICATE_THRESHOLD")


class IngestJobOut(BaseModel):
    id: str
    source: str
    collection: str
    kind: str = Field(description="folder, manifest, urls, or changes (a watched folder's batch of changes)")
    status: Literal["queued", "running", "done", "failed", "cancelled", "interrupted"]
    summary: dict[str, Any]
    error: str | None
    attempts: int = Field(description="Runs started; 2 or more: resumed after a server restart")
    cancel_requested: bool = Field(description="DELETE was asked; a running job stops after its current batch")
    created_at: str
    started_at: str | None
    finished_at: str | None

    @classmethod
    def of(cls, job: JobRecord) -> IngestJobOut:
        return cls(
            id=job.id,
            source=job.source,
            collection=job.collection,
            kind=job.kind,
            status=job.status,
            summary=job.summary,
            error=job.error,
            attempts=job.attempts,
            cancel_requested=job.cancel_requested,
            created_at=job.created_at.isoformat(),
            started_at=job.started_at.isoformat() if job.started_at else None,
            finished_at=job.finished_at.isoformat() if job.finished_at else None,
        )
