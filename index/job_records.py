"""Ingest jobs in the database, so they outlive the process that runs them.

States: queued -> running -> done | failed | cancelled | interrupted. A restarted writer
finds its `running` and `queued` jobs here and runs them again (ingest is idempotent).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Result, select, update
from sqlalchemy.orm import Session, sessionmaker

from index.errors import NotFoundError
from index.models import IngestJob, utcnow

UNFINISHED = ("queued", "running")
FINISHED = ("done", "failed", "cancelled", "interrupted")


@dataclass(frozen=True)
class JobRecord:
    id: str
    collection: str
    kind: str
    source: str
    options: dict[str, Any]
    status: str
    summary: dict[str, Any]
    error: str | None
    attempts: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


def _record(row: IngestJob) -> JobRecord:
    return JobRecord(
        id=row.id,
        collection=row.collection,
        kind=row.kind,
        source=row.source,
        options=dict(row.options or {}),
        status=row.status,
        summary=dict(row.summary or {}),
        error=row.error,
        attempts=row.attempts,
        cancel_requested=bool(row.cancel_requested),
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


def _changed(result: Result[Any]) -> bool:
    """Whether an UPDATE matched a row: the claim and the cancel race other threads and processes on it."""
    return bool(cast(CursorResult[Any], result).rowcount)


def add_job(
    session: Session, *, job_id: str, collection: str, kind: str, source: str, options: dict[str, Any]
) -> JobRecord:
    row = IngestJob(
        id=job_id,
        collection=collection,
        kind=kind,
        source=source,
        options=options,
        status="queued",
        summary={},
        attempts=0,
        cancel_requested=False,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return _record(row)


def get_job(session: Session, *, job_id: str) -> JobRecord:
    row = session.get(IngestJob, job_id)
    if row is None:
        raise NotFoundError(f"No ingest job {job_id!r}.")
    return _record(row)


def unfinished_jobs(session: Session) -> list[JobRecord]:
    """Running and queued jobs, oldest first: the order a restarted server runs them in."""
    rows = session.scalars(
        select(IngestJob).where(IngestJob.status.in_(UNFINISHED)).order_by(IngestJob.created_at, IngestJob.id)
    )
    return [_record(row) for row in rows]


def recent_jobs(session: Session, *, limit: int = 100) -> list[JobRecord]:
    rows = session.scalars(select(IngestJob).order_by(IngestJob.created_at.desc(), IngestJob.id).limit(limit))
    return [_record(row) for row in rows]


def start_job(session: Session, *, job_id: str) -> bool:
    """Queued -> running, counting the attempt; False if it was cancelled (or finished) meanwhile."""
    result = session.execute(
        update(IngestJob)
        .where(IngestJob.id == job_id, IngestJob.status.in_(UNFINISHED))
        .values(status="running", attempts=IngestJob.attempts + 1, started_at=utcnow(), error=None)
    )
    return _changed(result)


def save_progress(session: Session, *, job_id: str, summary: dict[str, Any]) -> None:
    session.execute(update(IngestJob).where(IngestJob.id == job_id).values(summary=summary))


def finish_job(
    session: Session, *, job_id: str, status: str, summary: dict[str, Any] | None = None, error: str | None = None
) -> None:
    values: dict[str, Any] = {"status": status, "error": error, "finished_at": utcnow()}
    if summary is not None:
        values["summary"] = summary
    session.execute(update(IngestJob).where(IngestJob.id == job_id).values(**values))


def request_cancel(session: Session, *, job_id: str) -> None:
    session.execute(
        update(IngestJob).where(IngestJob.id == job_id, IngestJob.status.in_(UNFINISHED)).values(cancel_requested=True)
    )


def requeue(session: Session, *, job_id: str, summary: dict[str, Any] | None = None) -> None:
    """Running -> queued: stopped with the process, to run again at the next start."""
    values: dict[str, Any] = {"status": "queued"}
    if summary is not None:
        values["summary"] = summary
    session.execute(update(IngestJob).where(IngestJob.id == job_id, IngestJob.status.in_(UNFINISHED)).values(**values))


def interrupt_unfinished(session: Session, *, reason: str) -> int:
    """Every queued or running job ended as interrupted (a restored backup's, whose process is gone)."""
    result = session.execute(
        update(IngestJob)
        .where(IngestJob.status.in_(UNFINISHED))
        .values(status="interrupted", error=reason, finished_at=utcnow())
    )
    return int(cast(CursorResult[Any], result).rowcount or 0)


def cancel_queued(session: Session, *, job_id: str) -> bool:
    """A queued job cancelled before it starts; False if it is running or finished."""
    result = session.execute(
        update(IngestJob)
        .where(IngestJob.id == job_id, IngestJob.status == "queued")
        .values(status="cancelled", finished_at=utcnow())
    )
    return _changed(result)


class JobRecords:
    """The functions above, each in a transaction of its own."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def add(self, *, job_id: str, collection: str, kind: str, source: str, options: dict[str, Any]) -> JobRecord:
        with self.sessions.begin() as session:
            return add_job(session, job_id=job_id, collection=collection, kind=kind, source=source, options=options)

    def get(self, job_id: str) -> JobRecord:
        with self.sessions() as session:
            return get_job(session, job_id=job_id)

    def unfinished(self) -> list[JobRecord]:
        with self.sessions() as session:
            return unfinished_jobs(session)

    def recent(self, limit: int = 100) -> list[JobRecord]:
        with self.sessions() as session:
            return recent_jobs(session, limit=limit)

    def start(self, job_id: str) -> bool:
        with self.sessions.begin() as session:
            return start_job(session, job_id=job_id)

    def progress(self, job_id: str, summary: dict[str, Any]) -> None:
        with self.sessions.begin() as session:
            save_progress(session, job_id=job_id, summary=summary)

    def finish(
        self, job_id: str, *, status: str, summary: dict[str, Any] | None = None, error: str | None = None
    ) -> None:
        with self.sessions.begin() as session:
            finish_job(session, job_id=job_id, status=status, summary=summary, error=error)

    def request_cancel(self, job_id: str) -> None:
        with self.sessions.begin() as session:
            request_cancel(session, job_id=job_id)

    def requeue(self, job_id: str, *, summary: dict[str, Any] | None = None) -> None:
        with self.sessions.begin() as session:
            requeue(session, job_id=job_id, summary=summary)

    def cancel_queued(self, job_id: str) -> bool:
        with self.sessions.begin() as session:
            return cancel_queued(session, job_id=job_id)
