"""Server-side ingest jobs: one at a time, in a background thread, with live progress."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from app.errors import NotFoundError
from app.ingest.pipeline import Ingestor, IngestSummary
from app.ingest.sources import Rejected, SourceItem

log = logging.getLogger(__name__)


@dataclass
class Job:
    id: str
    source: str
    collection: str
    status: str = "queued"
    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    finished_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class JobManager:
    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pe-ingest-job")
        self._cancel = threading.Event()

    def submit(
        self,
        *,
        source: str,
        collection: str,
        items: Callable[[], Iterable[SourceItem | Rejected]],
        ingestor: Callable[[], Ingestor],
    ) -> Job:
        job = Job(id=uuid.uuid4().hex, source=source, collection=collection)
        self._jobs[job.id] = job
        self._pool.submit(self._run, job, items, ingestor)
        return job

    def _run(self, job: Job, items: Callable, ingestor: Callable) -> None:
        job.status = "running"

        def progress(summary: IngestSummary) -> None:
            job.summary = summary.to_dict()

        try:
            summary = ingestor().run(items(), collection=job.collection, progress=progress, cancel=self._cancel)
            job.summary = summary.to_dict()
            job.status = "cancelled" if self._cancel.is_set() else "done"
        except Exception as exc:  # noqa: BLE001 - a job reports its failure instead of raising
            log.exception("Ingest job %s failed", job.id)
            job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
        job.finished_at = datetime.now(UTC).isoformat()

    def get(self, job_id: str) -> Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise NotFoundError(f"No ingest job {job_id!r}.") from None

    def close(self) -> None:
        self._cancel.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
