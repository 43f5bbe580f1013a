"""Ingest jobs recorded in the database: queued one at a time, cancelled, failed, and resumed after a restart.

The manager is driven here with run functions the test controls (what it schedules, not what
ingest does); the real ingest runs under it in the server tests at the end, a kill -9 included.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import requests
from fastapi.testclient import TestClient

from app.errors import ConflictError, SourceError
from app.ingest.jobs import JobManager
from app.ingest.writer import IngestSummary
from index.errors import NotFoundError
from index.job_records import JobRecord
from tests.support.ingest import make_folder
from tests.support.server import READY_DEADLINE, T16, launch, wait_ready
from tests.support.store import open_store

WAIT_S = 30


class Runs:
    """A run function whose jobs block until released, recording the order they ran in."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.release: dict[str, threading.Event] = {}
        self.running = threading.Semaphore(0)
        self.concurrent = 0
        self.most_concurrent = 0
        self.fail: dict[str, Exception] = {}

    def __call__(self, record: JobRecord, progress, cancel: threading.Event) -> IngestSummary:
        self.concurrent += 1
        self.most_concurrent = max(self.most_concurrent, self.concurrent)
        self.started.append(record.source)
        summary = IngestSummary(added=1)
        progress(summary)
        self.running.release()
        gate = self.release.setdefault(record.source, threading.Event())
        while not gate.wait(0.01):
            if cancel.is_set():
                break
        self.concurrent -= 1
        if record.source in self.fail:
            raise self.fail[record.source]
        return summary


def manager(tmp_path: Path, runs: Runs, check=lambda record: None, workers: int = 1) -> JobManager:
    jobs = JobManager(records=open_store(tmp_path).jobs, run=runs, check=check, workers=workers)
    jobs.start()
    return jobs


def submit(jobs: JobManager, source: str, collection: str = "c") -> JobRecord:
    return jobs.submit(collection=collection, kind="folder", source=source, options={})


def test_one_job_per_collection_at_a_time_in_the_order_queued(tmp_path: Path) -> None:
    runs = Runs()
    jobs = manager(tmp_path, runs, workers=2)
    first, second = submit(jobs, "a"), submit(jobs, "b")
    other = submit(jobs, "x", collection="other")
    assert runs.running.acquire(timeout=WAIT_S) and runs.running.acquire(timeout=WAIT_S)
    # Another collection's job runs beside the first; the same collection's second one waits.
    assert sorted(runs.started) == ["a", "x"]
    assert jobs.get(first.id).status == "running" and jobs.get(first.id).summary["added"] == 1  # live progress
    assert jobs.get(other.id).status == "running" and jobs.get(second.id).status == "queued"
    for source in ("a", "b", "x"):
        runs.release.setdefault(source, threading.Event()).set()
    assert jobs.wait_idle(WAIT_S)
    assert runs.started.index("b") > runs.started.index("a") and runs.most_concurrent == 2
    done = jobs.get(second.id)
    assert done.status == "done" and done.attempts == 1 and done.finished_at is not None
    assert {job.source for job in jobs.recent()[:3]} == {"a", "b", "x"}
    jobs.close()


def test_cancel_a_queued_job_at_once_and_a_running_one_after_its_batch(tmp_path: Path) -> None:
    runs = Runs()
    jobs = manager(tmp_path, runs)
    running, queued = submit(jobs, "a"), submit(jobs, "b")
    assert runs.running.acquire(timeout=WAIT_S)
    assert jobs.cancel(queued.id).status == "cancelled"
    jobs.cancel(running.id)
    assert jobs.wait_idle(WAIT_S)
    assert jobs.get(running.id).status == "cancelled" and runs.started == ["a"]  # b never ran
    with pytest.raises(ConflictError, match="already ended"):
        jobs.cancel(running.id)
    with pytest.raises(NotFoundError):
        jobs.cancel("no-such-job")
    jobs.close()


def test_a_failed_job_keeps_its_reason_and_the_next_one_runs(tmp_path: Path) -> None:
    runs = Runs()
    runs.fail["a"] = SourceError("cannot list s3://b/p: access denied")
    runs.release["a"] = threading.Event()
    runs.release["a"].set()
    runs.release["b"] = runs.release["a"]
    jobs = manager(tmp_path, runs)
    failed, after = submit(jobs, "a"), submit(jobs, "b")
    assert jobs.wait_idle(WAIT_S)
    record = jobs.get(failed.id)
    assert (record.status, record.error) == ("failed", "cannot list s3://b/p: access denied")
    assert record.summary["added"] == 1  # what it had committed before failing
    assert jobs.get(after.id).status == "done"
    jobs.close()


def test_a_stopped_server_leaves_its_job_to_the_next_one_which_resumes_it(tmp_path: Path) -> None:
    runs = Runs()
    jobs = manager(tmp_path, runs)
    interrupted, waiting = submit(jobs, "a"), submit(jobs, "b")
    gone = submit(jobs, "c")
    assert runs.running.acquire(timeout=WAIT_S)
    jobs.close()  # a graceful stop: the running job stops after its batch, back in the queue, not cancelled
    assert jobs.get(interrupted.id).status == "queued" and jobs.get(interrupted.id).attempts == 1
    assert jobs.get(waiting.id).status == "queued"

    again = Runs()
    for source in "abc":
        again.release[source] = threading.Event()
        again.release[source].set()
    restarted = JobManager(
        records=open_store(tmp_path).jobs,
        run=again,
        check=lambda record: "it no longer exists" if record.source == "c" else None,
    )
    assert [job.id for job in restarted.resume()] == [interrupted.id, waiting.id]
    restarted.start()
    assert restarted.wait_idle(WAIT_S)
    assert again.started == ["a", "b"]
    resumed = restarted.get(interrupted.id)
    assert (resumed.status, resumed.attempts) == ("done", 2)
    lost = restarted.get(gone.id)
    assert lost.status == "interrupted" and "it no longer exists" in (lost.error or "")
    restarted.close()


def test_a_cancel_asked_for_before_a_restart_holds_after_it(tmp_path: Path) -> None:
    runs = Runs()
    jobs = manager(tmp_path, runs)
    running = submit(jobs, "a")
    assert runs.running.acquire(timeout=WAIT_S)
    jobs.records.request_cancel(running.id)  # recorded, and the process stops before the batch ends
    jobs.close()
    again = Runs()
    restarted = JobManager(records=open_store(tmp_path).jobs, run=again, check=lambda record: None)
    assert restarted.resume() == []
    assert restarted.get(running.id).status == "cancelled" and again.started == []


def test_a_job_that_keeps_crashing_the_server_is_not_started_again(tmp_path: Path) -> None:
    records = open_store(tmp_path).jobs
    job = records.add(job_id="crashy", collection="c", kind="folder", source="a", options={})
    for _ in range(3):
        assert records.start(job.id)  # each run ended by a crash: the record still says running
    jobs = JobManager(records=records, run=Runs(), check=lambda record: None)
    assert jobs.resume() == []
    ended = jobs.get(job.id)
    assert ended.status == "interrupted" and "during each of its 3 runs" in (ended.error or "")


def test_a_restored_backup_does_not_resume_the_jobs_it_caught_running(tmp_path: Path, monkeypatch) -> None:
    from app.services.backup import backup, restore
    from app.services.storage import open_store as open_data_dir
    from app.settings import Settings

    original = Settings(data_dir=tmp_path / "original")
    store = open_data_dir(original)
    job = store.jobs.add(job_id="caught", collection="c", kind="folder", source="/srv/a", options={})
    store.jobs.start(job.id)
    store.close()
    backup(original, tmp_path / "backup")
    restored = Settings(data_dir=tmp_path / "restored")
    restore(restored, tmp_path / "backup")
    record = open_data_dir(restored).jobs.get(job.id)
    assert record.status == "interrupted" and "restored from a backup" in (record.error or "")


def test_the_api_lists_cancels_and_refuses_to_cancel_an_ended_job(client: TestClient, tmp_path, monkeypatch) -> None:
    make_folder(tmp_path / "root" / "p", count=2)
    monkeypatch.setattr(client.app.state.settings, "ingest_roots", str(tmp_path / "root"))
    job_id = client.post("/ingest", json={"source": str(tmp_path / "root" / "p"), "collection": "api-jobs"}).json()[
        "id"
    ]
    assert client.app.state.services.jobs.wait_idle(60)
    listed = client.get("/ingest").json()
    assert listed[0]["id"] == job_id and listed[0]["kind"] == "folder" and listed[0]["attempts"] == 1
    assert listed[0]["cancel_requested"] is False
    refused = client.delete(f"/ingest/{job_id}")
    assert refused.status_code == 409 and "already ended (done)" in refused.json()["message"]
    assert client.delete("/ingest/nope").status_code == 404
    assert client.post("/ingest", json={"source": str(tmp_path / "root" / "none"), "kind": "folder"}).status_code == 400
    client.delete("/collections/api-jobs")


def _job(url: str, job_id: str) -> dict:
    return requests.get(f"{url}/ingest/{job_id}", timeout=10).json()


def _rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as connection:
        return connection.execute(sql).fetchall()


@pytest.mark.slow
def test_a_server_killed_mid_job_resumes_it_after_restart(tmp_path: Path) -> None:
    count = 48
    paths = make_folder(tmp_path / "roots" / "photos", count=count)
    env = {"PE_SEARCH_INGEST_ROOTS": str(tmp_path / "roots"), "PE_SEARCH_INGEST_BATCH": "2"}
    server = launch(tmp_path, T16, env)
    try:
        assert (why := wait_ready(server, READY_DEADLINE)) is None, f"{why}\n{server.log_tail()}"
        body = {"source": str(tmp_path / "roots" / "photos"), "collection": "killed"}
        job_id = requests.post(f"{server.url}/ingest", json=body, timeout=30).json()["id"]
        deadline = time.monotonic() + 120
        while _job(server.url, job_id)["summary"].get("added", 0) < 4:
            assert time.monotonic() < deadline and _job(server.url, job_id)["status"] == "running"
            time.sleep(0.02)
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=30)
    finally:
        server.stop()
    db = tmp_path / "data" / "pe-search.db"
    at_kill = _rows(db, "SELECT COUNT(*) FROM images")[0][0]
    assert 0 < at_kill < count, "the server must die mid-job for this test to mean anything"
    assert _rows(db, f"SELECT status FROM ingest_jobs WHERE id = '{job_id}'") == [("running",)]

    restarted = launch(tmp_path, T16, env)
    try:
        assert (why := wait_ready(restarted, READY_DEADLINE)) is None, f"{why}\n{restarted.log_tail()}"
        deadline = time.monotonic() + 180
        while (job := _job(restarted.url, job_id))["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, job
            time.sleep(0.1)
    finally:
        restarted.stop()
    assert job["status"] == "done" and job["attempts"] == 2, job
    assert job["summary"]["unchanged"] >= at_kill  # what the first run committed was skipped, not redone
    # Everything once: one image per file, one source per file, no content twice.
    assert _rows(db, "SELECT COUNT(*), COUNT(DISTINCT sha256) FROM images") == [(count, count)]
    uris = {uri for (uri,) in _rows(db, "SELECT uri FROM sources")}
    assert uris == {str(p.resolve()) for p in paths}
    assert _rows(db, "SELECT COUNT(*) FROM image_vectors") == [(count,)]
