"""Server-side ingest: which paths a job may read, and building the job that reads them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from app.errors import ForbiddenPathError, InvalidInputError
from app.ingest.jobs import Job, JobManager
from app.ingest.near_duplicates import NearDuplicatePolicy, NearMode
from app.ingest.pipeline import BatchObserver, Ingestor
from app.ingest.sources import Rejected, SourceItem, folder_items, manifest_items, url_list_items
from app.media.fetch import UrlFetcher
from app.model.registry import ModelRegistry
from app.settings import Settings
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
        jobs: JobManager,
        on_batch: BatchObserver | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.fetcher = fetcher
        self.settings = settings
        self.jobs = jobs
        self.on_batch = on_batch

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
    ) -> Job:
        near = None
        if near_duplicates is not None:
            near = NearDuplicatePolicy(near_duplicates, near_threshold or self.settings.duplicate_threshold)
        roots = self.settings.ingest_root_paths
        path = allowed_path(source, roots)
        if not path.exists():
            raise InvalidInputError(f"{source} does not exist.")
        readers: dict[str, Callable[[], Iterable[SourceItem | Rejected]]] = {
            "folder": lambda: folder_items(path),
            "manifest": lambda: manifest_items(path, column, allowed_roots=roots),
            "urls": lambda: url_list_items(path),
        }

        def ingestor() -> Ingestor:
            # Resolved in the job's thread: loading a model can take a while.
            encoder = self.registry.get(model or self.store.model_of(collection))
            return Ingestor.from_settings(
                self.settings,
                store=self.store,
                encoder=encoder,
                fetcher=self.fetcher,
                on_batch=self.on_batch,
                near_duplicates=near,
            )

        return self.jobs.submit(source=str(path), collection=collection, items=readers[kind], ingestor=ingestor)
