"""Server-side ingest: which sources a job may read, and running a recorded job over them.

A job may read local folders and manifests under PE_SEARCH_INGEST_ROOTS, and object-storage
prefixes listed there too (`s3://bucket/prefix`). What a job reads is decided when it is
submitted and stored with it, so a resumed job reads the same source again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from app.errors import ForbiddenPathError, InvalidInputError
from app.ingest.changes import apply_changes, sync_folder
from app.ingest.jobs import JobManager
from app.ingest.near_duplicates import NearDuplicatePolicy, NearMode
from app.ingest.pipeline import BatchObserver, Ingestor
from app.ingest.sources import Rejected, SourceItem, folder_items, manifest_items, object_items, url_list_items
from app.ingest.writer import IngestSummary
from app.media.fetch import UrlFetcher
from app.media.objects import ObjectStorage, is_object_url, under_prefix
from app.model.registry import ModelRegistry
from app.settings import Settings
from index.job_records import JobRecord
from index.store import VectorStore


def allowed_path(raw: str, roots: tuple[Path, ...]) -> Path:
    """The resolved path, if it lies under one of the roots (no `..` or symlink escapes)."""
    path = Path(raw).resolve()
    if not any(path.is_relative_to(root) for root in roots):
        raise ForbiddenPathError(raw)
    return path


class IngestService:
    def __init__(
        self,
        *,
        store: VectorStore,
        registry: ModelRegistry,
        fetcher: UrlFetcher,
        settings: Settings,
        on_batch: BatchObserver | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.fetcher = fetcher
        self.settings = settings
        self.on_batch = on_batch
        self.jobs = JobManager(
            records=store.jobs, run=self.run_job, check=self.source_gone, workers=settings.ingest_jobs
        )

    def start(
        self,
        *,
        source: str,
        kind: str,
        collection: str,
        column: str | None,
        model: str | None,
        near_duplicates: NearMode | None = None,
        near_threshold: float | None = None,
    ) -> JobRecord:
        """Check the source against the allowed roots and prefixes, then queue a job reading it."""
        resolved = self._allowed(source, kind)
        if not is_object_url(resolved) and not Path(resolved).exists():
            raise InvalidInputError(f"{source} does not exist.")
        options = {
            "column": column,
            "model": model,
            "near_duplicates": near_duplicates,
            "near_threshold": near_threshold,
        }
        return self.jobs.submit(collection=collection, kind=kind, source=resolved, options=options)

    def _allowed(self, source: str, kind: str) -> str:
        if is_object_url(source):
            if kind != "folder":
                raise InvalidInputError("an object-storage source is read as a folder (kind 'folder')")
            if not under_prefix(source, self.settings.ingest_object_prefixes):
                raise ForbiddenPathError(source)
            return source
        return str(allowed_path(source, self.settings.ingest_root_paths))

    def source_gone(self, record: JobRecord) -> str | None:
        """Why a recorded job can no longer run (checked on resume), or None: the same rules as when it was
        submitted, as the settings now stand."""
        if is_object_url(record.source):
            # The bucket itself is listed again by the run, which reports what it finds.
            allowed = under_prefix(record.source, self.settings.ingest_object_prefixes)
            return None if allowed else f"{record.source} is no longer under PE_SEARCH_INGEST_ROOTS"
        if record.kind == "changes" or record.options.get("prune"):
            watched = {folder.resolve() for _, folder in self.settings.watched_folders}
            if Path(record.source) not in watched:
                return f"{record.source} is no longer in PE_SEARCH_WATCH_FOLDERS"
            return None if Path(record.source).is_dir() else f"{record.source} is not a folder now"
        try:
            path = allowed_path(record.source, self.settings.ingest_root_paths)
        except ForbiddenPathError:
            return f"{record.source} is no longer under PE_SEARCH_INGEST_ROOTS"
        return None if path.exists() else f"{record.source} no longer exists"

    def run_job(
        self, record: JobRecord, progress: Callable[[IngestSummary], None], cancel: threading.Event
    ) -> IngestSummary:
        """Run a recorded job to its end (or its cancellation); what it already committed is skipped as unchanged."""
        options = record.options
        ingestor = self._ingestor(record.collection, options)
        if record.options.get("prune"):
            return sync_folder(
                ingestor, collection=record.collection, root=Path(record.source), progress=progress, cancel=cancel
            )
        if record.kind == "changes":
            return apply_changes(
                ingestor,
                collection=record.collection,
                root=Path(record.source),
                upserts=[Path(p) for p in options.get("paths", [])],
                deletes=[Path(p) for p in options.get("deleted", [])],
                deleted_dirs=[Path(p) for p in options.get("deleted_dirs", [])],
                progress=progress,
                cancel=cancel,
            )
        return ingestor.run(self._items(record), collection=record.collection, progress=progress, cancel=cancel)

    def _items(self, record: JobRecord) -> Iterable[SourceItem | Rejected]:
        source, column = record.source, record.options.get("column")
        if is_object_url(source):
            return object_items(source, ObjectStorage(self.settings.object_policy()))
        readers: dict[str, Callable[[], Iterable[SourceItem | Rejected]]] = {
            "folder": lambda: folder_items(Path(source)),
            "manifest": lambda: manifest_items(
                Path(source),
                column,
                allowed_roots=self.settings.ingest_root_paths,
                allowed_objects=self.settings.ingest_object_prefixes,
            ),
            "urls": lambda: url_list_items(Path(source)),
        }
        return readers[record.kind]()

    def _ingestor(self, collection: str, options: dict[str, Any]) -> Ingestor:
        near = None
        if options.get("near_duplicates"):
            threshold = options.get("near_threshold") or self.settings.duplicate_threshold
            near = NearDuplicatePolicy(options["near_duplicates"], threshold)
        # Resolved in the job's thread: loading a model can take a while.
        encoder = self.registry.get(options.get("model") or self.store.model_of(collection))
        return Ingestor.from_settings(
            self.settings,
            store=self.store,
            encoder=encoder,
            fetcher=self.fetcher,
            on_batch=self.on_batch,
            near_duplicates=near,
        )
