"""Server-side ingest jobs: recorded in the database, run one at a time in a background thread.

A job's record (index.job_records) is the truth; this module only runs them. A restarted
writer calls `resume()`, which queues again whatever was running or queued when the last
process stopped, however it stopped: ingest skips what is already stored, so running a job
again finishes it without duplicates. A graceful stop leaves the running job `running` for
that reason, rather than calling it cancelled.
"""

from __future__ import annotations

import logging
import queue
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

# (record, progress callback, cancel event) -> the run's summary; raises to fail the job.
JobRun = Callable[[JobRecord, Callable[[IngestSummary], None], threading.Event], IngestSummary]
# A reason the job's source can no longer be read (it was deleted, or is no longer allowed), or None.
SourceCheck = Callable[[JobRecord], str | None]


def stored_summary(summary: IngestSummary) -> dict[str, Any]:
    out = summary.to_dict()
    out["failures"] = out["failures"][:LISTED_FAILURES]
    return out


class JobManager:
    def __init__(self, *, records: JobRecords, run: JobRun, check: SourceCheck) -> None:
        self.records = records
        self._run = run
        self._check = check
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._cancel: dict[str, threading.Event] = {}
        self._live: dict[str, dict[str, Any]] = {}
        self._stopping = threading.Event()
        self._idle = threading.Condition()
        self._pending = 0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the worker thread (once): a reader never calls it, so it never runs a job."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="pe-ingest-job", daemon=True)
            self._thread.start()

    def resume(self) -> list[JobRecord]:
        """Queue again every job left running or queued by a previous process; the ones whose source is
        gone are marked interrupted with the reason. Returns the jobs queued."""
        queued = []
        for record in self.records.unfinished():
            reason = self._check(record)
            if reason is not None:
                log.warning("Ingest job %s not resumed: %s", record.id, reason)
                self.records.finish(record.id, status="interrupted", error=f"not resumed after a restart: {reason}")
                continue
            log.info("Resuming ingest job %s (%s, attempt %d)", record.id, record.source, record.attempts + 1)
            self._enqueue(record.id)
            queued.append(record)
        return queued

    def submit(self, *, collection: str, kind: str, source: str, options: dict[str, Any]) -> JobRecord:
        record = self.records.add(
            job_id=uuid.uuid4().hex, collection=collection, kind=kind, source=source, options=options
        )
        self._enqueue(record.id)
        return record

    def get(self, job_id: str) -> JobRecord:
        record = self.records.get(job_id)
        live = self._live.get(job_id)
        return replace(record, summary=live) if live is not None and not record.finished else record

    def recent(self, limit: int = 100) -> list[JobRecord]:
        return [self.get(record.id) if not record.finished else record for record in self.records.recent(limit)]

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a queued job at once, or a running one after its current batch (already committed batches stay)."""
        record = self.records.get(job_id)
        if record.finished:
            raise ConflictError(f"Ingest job {job_id!r} has already ended ({record.status}).")
        if not self.records.cancel_queued(job_id):
            event = self._cancel.get(job_id)
            if event is not None:
                event.set()
        return self.get(job_id)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no job is queued or running (tests, and a CLI that submits then waits)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self) -> None:
        """Stop after the running job's current batch; it stays `running`, for the next process to resume."""
        self._stopping.set()
        for event in list(self._cancel.values()):
            event.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join()

    def _enqueue(self, job_id: str) -> None:
        with self._idle:
            self._pending += 1
        self._queue.put(job_id)

    def _work(self) -> None:
        while not self._stopping.is_set():
            job_id = self._queue.get()
            if job_id is None:
                break
            try:
                if not self._stopping.is_set() and self.records.start(job_id):
                    self._execute(self.records.get(job_id))
            except Exception:  # noqa: BLE001 - the worker must outlive any one job's failure
                log.exception("Ingest job %s: bookkeeping failed", job_id)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _execute(self, record: JobRecord) -> None:
        cancel = self._cancel.setdefault(record.id, threading.Event())
        last_saved = [0.0]

        def progress(summary: IngestSummary) -> None:
            self._live[record.id] = stored_summary(summary)
            if time.monotonic() - last_saved[0] >= PROGRESS_EVERY_S:
                self.records.progress(record.id, self._live[record.id])
                last_saved[0] = time.monotonic()

        try:
            summary = self._run(record, progress, cancel)
        except Exception as exc:  # noqa: BLE001 - a job reports its failure instead of raising
            reason = str(exc) if isinstance(exc, PESearchError) else f"{type(exc).__name__}: {exc}"
            log.warning("Ingest job %s failed: %s", record.id, reason)
            self.records.finish(record.id, status="failed", summary=self._live.pop(record.id, None), error=reason)
            return
        finally:
            self._cancel.pop(record.id, None)
        if self._stopping.is_set():
            self.records.progress(record.id, stored_summary(summary))  # left running: resumed at the next start
        else:
            self.records.finish(
                record.id, status="cancelled" if cancel.is_set() else "done", summary=stored_summary(summary)
            )
        self._live.pop(record.id, None)
