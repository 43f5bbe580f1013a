"""The server's watched folders (PE_SEARCH_WATCH_FOLDERS): each kept in sync through ingest jobs.

At start-up each folder gets a sync job (new and changed files added, vanished ones removed);
then every settled batch of changes becomes a `changes` job. Being jobs, they are recorded,
queued behind other ingests of the collection, and resumed after a restart.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from app.ingest.jobs import JobManager
from app.ingest.watch import watch_folder

log = logging.getLogger(__name__)
# A job's option lists stay small enough to store; a bigger burst of changes becomes several jobs.
MAX_PATHS_PER_JOB = 5000


class WatchedFolders:
    def __init__(self, *, folders: tuple[tuple[str, Path], ...], jobs: JobManager, settle_s: float = 1.0) -> None:
        self.folders = folders
        self.jobs = jobs
        self.settle_s = settle_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._ready: list[threading.Event] = []

    def start(self) -> None:
        # A sync resumed from the last run does what a new one would.
        syncing = {(job.collection, job.source) for job in self.jobs.unfinished() if job.options.get("prune")}
        for collection, folder in self.folders:
            root = folder.resolve()
            if not root.is_dir():
                log.error("PE_SEARCH_WATCH_FOLDERS: %s is not a folder; not watched", folder)
                continue
            if (collection, str(root)) not in syncing:
                self.jobs.submit(collection=collection, kind="folder", source=str(root), options={"prune": True})
            ready = threading.Event()
            self._ready.append(ready)
            thread = threading.Thread(
                target=self._watch, args=(collection, root, ready), name=f"pe-watch-{collection}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
            log.info("Watching %s for collection %r", root, collection)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Whether every folder's OS watch is in place (within `timeout`)."""
        return all(ready.wait(timeout) for ready in self._ready)

    def _watch(self, collection: str, root: Path, ready: threading.Event) -> None:
        try:
            for changes in watch_folder(root, stop=self._stop, settle_s=self.settle_s, on_ready=ready.set):
                upserts = [str(p) for p in changes.upserts]
                deletes = [str(p) for p in changes.deletes]
                dirs = [str(p) for p in changes.deleted_dirs]
                for start in range(0, max(len(upserts), len(deletes), len(dirs)), MAX_PATHS_PER_JOB):
                    options = {
                        "paths": upserts[start : start + MAX_PATHS_PER_JOB],
                        "deleted": deletes[start : start + MAX_PATHS_PER_JOB],
                        "deleted_dirs": dirs[start : start + MAX_PATHS_PER_JOB],
                    }
                    self.jobs.submit(collection=collection, kind="changes", source=str(root), options=options)
        except Exception:  # noqa: BLE001 - a watcher that dies says so; the server goes on serving
            log.exception("Watching %s stopped", root)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
