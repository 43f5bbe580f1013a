"""Server-side ingest jobs: recorded in the database, run in background threads, one per collection at a time.

A job's record (index.job_records) is the truth; this module only runs them. A restarted
writer calls `resume()`, which queues again whatever was running or queued when the last
process stopped, however it stopped: ingest skips what is already stored, so running a job
again finishes it without duplicates. A graceful stop puts the running job back in the
queue for that reason, rather than calling it cancelled; a cancel asked for is recorded, so
it holds across a restart too.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from app.errors import ConflictError, PESearchError
from app.ingest.writer import IngestSummary
from index.job_records import JobRecord, JobRecords

log = logging.getLogger(__name__)

# A job's stored summary lists at most this many failures (all are counted, and kept in `failures`).
LISTED_FAILURES = 1000
PROGRESS_EVERY_S = 1.0
# A job found running at start-up this many times (each run ended by a crash, not a stop) is not
# started again: something in its source may be what brings the server down.
MAX_CRASHED_RUNS = 3

# (record, progress callback, cancel event) -> the run's summary; raises to fail the job.
JobRun = Callable[[JobRecord, Callable[[IngestSummary], None], threading.Event], IngestSummary]
# A reason the job's source can no longer be read (it was deleted, or is no longer allowed), or None.
SourceCheck = Callable[[JobRecord], str | None]


def stored_summary(summary: IngestSummary) -> dict[str, Any]:
    out = summary.to_dict()
    out["failures"] = out["failures"][:LISTED_FAILURES]
    return out


class JobManager:
    def __init__(self, *, records: JobRecords, run: JobRun, check: SourceCheck, workers: int = 1) -> None:
        self.records = records
        self._run = run
        self._check = check
        self.workers = workers
        self._cond = threading.Condition()
        self._queue: list[tuple[str, str]] = []  # (job id, collection), oldest first
        self._busy: set[str] = set()  # collections with a job running
        self._running = 0
        self._cancel: dict[str, threading.Event] = {}
        self._live: dict[str, IngestSummary] = {}
        self._stopping = False
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the worker threads (once): a reader never calls it, so it never runs a job."""
        while len(self._threads) < self.workers:
            thread = threading.Thread(target=self._work, name=f"pe-ingest-job-{len(self._threads)}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def resume(self) -> list[JobRecord]:
        """Queue again every job a previous process left running or queued, unless it was cancelled,
        its source is gone, or it crashed the server too often. Returns the jobs queued."""
        queued = []
        for record in self.records.unfinished():
            reason = self._not_resumed(record)
            if reason == "cancelled":
                self.records.finish(record.id, status="cancelled")
            elif reason is not None:
                log.warning("Ingest job %s not resumed: %s", record.id, reason)
                self.records.finish(record.id, status="interrupted", error=f"not resumed after a restart: {reason}")
            else:
                log.info("Resuming ingest job %s (%s, run %d)", record.id, record.source, record.attempts + 1)
                self.records.requeue(record.id)
                self._enqueue(record.id, record.collection)
                queued.append(record)
        return queued

    def _not_resumed(self, record: JobRecord) -> str | None:
        if record.cancel_requested:
            return "cancelled"
        if record.status == "running" and record.attempts >= MAX_CRASHED_RUNS:
            return f"the server stopped without a shutdown during each of its {record.attempts} runs"
        return self._check(record)

    def submit(self, *, collection: str, kind: str, source: str, options: dict[str, Any]) -> JobRecord:
        record = self.records.add(
            job_id=uuid.uuid4().hex, collection=collection, kind=kind, source=source, options=options
        )
        self._enqueue(record.id, record.collection)
        return record

    def get(self, job_id: str) -> JobRecord:
        return self._with_progress(self.records.get(job_id))

    def recent(self, limit: int = 100) -> list[JobRecord]:
        return [self._with_progress(record) for record in self.records.recent(limit)]

    def _with_progress(self, record: JobRecord) -> JobRecord:
        """A running job's counts as of its last batch, not of its last save (once a second)."""
        live = self._live.get(record.id)
        return replace(record, summary=stored_summary(live)) if live is not None and not record.finished else record

    def unfinished(self) -> list[JobRecord]:
        return self.records.unfinished()

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a queued job at once, or a running one after its current batch (committed batches stay).
        The request is recorded first, so a restart meanwhile does not run the job again."""
        record = self.records.get(job_id)
        if record.finished:
            raise ConflictError(f"Ingest job {job_id!r} has already ended ({record.status}).")
        self.records.request_cancel(job_id)
        with self._cond:
            event = self._cancel.get(job_id)
            if event is not None:
                event.set()
            if self.records.cancel_queued(job_id):
                self._queue = [(j, c) for j, c in self._queue if j != job_id]
                self._cond.notify_all()
        return self.get(job_id)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no job is queued or running (tests, and a CLI that submits then waits)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and self._running == 0, timeout)

    def close(self) -> None:
        """Stop after each running job's current batch; they go back to `queued`, for the next process."""
        with self._cond:
            self._stopping = True
            for event in self._cancel.values():
                event.set()
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()

    def _enqueue(self, job_id: str, collection: str) -> None:
        with self._cond:
            self._cancel.setdefault(job_id, threading.Event())
            self._queue.append((job_id, collection))
            self._cond.notify_all()

    def _next(self) -> tuple[str, str] | None:
        """The oldest queued job whose collection has none running, claimed; None once stopping."""
        with self._cond:
            while True:
                if self._stopping:
                    return None
                for i, (job_id, collection) in enumerate(self._queue):
                    if collection not in self._busy:
                        del self._queue[i]
                        self._busy.add(collection)
                        self._running += 1
                        return job_id, collection
                self._cond.wait()

    def _work(self) -> None:
        while (claimed := self._next()) is not None:
            job_id, collection = claimed
            try:
                if self.records.start(job_id):
                    self._execute(self.records.get(job_id))
            except Exception:  # noqa: BLE001 - the worker must outlive any one job's failure
                log.exception("Ingest job %s: bookkeeping failed", job_id)
            finally:
                with self._cond:
                    self._busy.discard(collection)
                    self._running -= 1
                    self._cancel.pop(job_id, None)
                    self._live.pop(job_id, None)
                    self._cond.notify_all()

    def _execute(self, record: JobRecord) -> None:
        cancel = self._cancel[record.id]
        if record.cancel_requested:  # asked for between the claim and now
            self.records.finish(record.id, status="cancelled")
            return
        last_saved = [time.monotonic()]

        def progress(summary: IngestSummary) -> None:
            self._live[record.id] = summary
            if time.monotonic() - last_saved[0] >= PROGRESS_EVERY_S:
                self.records.progress(record.id, stored_summary(summary))
                last_saved[0] = time.monotonic()

        try:
            summary = self._run(record, progress, cancel)
        except Exception as exc:  # noqa: BLE001 - a job reports its failure instead of raising
            reason = str(exc) if isinstance(exc, PESearchError) else f"{type(exc).__name__}: {exc}"
            log.warning("Ingest job %s failed: %s", record.id, reason)
            live = self._live.get(record.id)
            self.records.finish(
                record.id, status="failed", summary=stored_summary(live) if live else None, error=reason
            )
            return
        if self.records.get(record.id).cancel_requested:
            self.records.finish(record.id, status="cancelled", summary=stored_summary(summary))
        elif self._stopping:
            self.records.requeue(record.id, summary=stored_summary(summary))  # the next process resumes it
        else:
            self.records.finish(record.id, status="done", summary=stored_summary(summary))
