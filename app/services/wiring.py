"""The one place the object graph is wired: the HTTP app's lifespan, the CLI and the Ray actors build through here."""

from __future__ import annotations

from dataclasses import dataclass

from app.ingest.jobs import JobManager
from app.ingest.pipeline import BatchObserver
from app.ingest.service import IngestService
from app.ingest.watched_folders import WatchedFolders
from app.media.uploads import UploadFiles
from app.model.registry import ModelRegistry
from app.runtime.batcher import MicroBatcher
from app.runtime.encoders import Encoders, ForwardObserver, build_encoders
from app.runtime.executor import InferenceRunner
from app.services.duplicates import DuplicateService
from app.services.embedding import Embedder
from app.services.images import ImageService
from app.services.search import SearchService
from app.services.storage import open_store
from app.services.thumbnails import Thumbnails
from app.settings import Settings
from index.store import VectorStore


@dataclass(frozen=True)
class Services:
    settings: Settings
    encoders: Encoders
    runner: InferenceRunner
    batcher: MicroBatcher
    embedder: Embedder
    store: VectorStore
    search: SearchService
    duplicates: DuplicateService
    images: ImageService
    thumbnails: Thumbnails
    jobs: JobManager
    ingest: IngestService
    watched: WatchedFolders

    @property
    def registry(self) -> ModelRegistry:
        return self.encoders.registry

    def start_jobs(self) -> None:
        """The writer's background work: jobs left by the last process resumed, then watched folders synced.
        A reader runs no jobs (it cannot write)."""
        if self.settings.read_only:
            return
        self.jobs.resume()
        self.jobs.start()
        self.watched.start()

    async def aclose(self, *, checkpoint: bool = True) -> None:
        """Stop the watchers, jobs and workers, then close the store (checkpointing the indexes, unless told not to)."""
        self.watched.close()
        self.jobs.close()
        await self.batcher.close()
        self.runner.close()
        self.store.close(checkpoint=checkpoint)


def build_services(
    settings: Settings,
    *,
    store: VectorStore | None = None,
    on_forward: ForwardObserver | None = None,
    on_batch: BatchObserver | None = None,
) -> Services:
    """Every service over one store (opened here unless given); no model is loaded until first use."""
    encoders = build_encoders(settings, on_forward=on_forward)
    store = store or open_store(settings)
    runner = InferenceRunner(settings.workers)
    batcher = MicroBatcher(
        runner,
        max_batch=settings.microbatch_max_items,
        max_wait_ms=settings.microbatch_wait_ms,
        enabled=settings.microbatch,
    )
    embedder = Embedder(
        encoders.registry,
        encoders.loader,
        batcher,
        max_items=settings.max_batch,
        max_text_chars=settings.max_text_chars,
        text_cache_size=settings.text_cache_size,
    )
    uploads = UploadFiles(settings.uploads_dir)
    ingest = IngestService(
        store=store, registry=encoders.registry, fetcher=encoders.fetcher, settings=settings, on_batch=on_batch
    )
    return Services(
        settings=settings,
        encoders=encoders,
        runner=runner,
        batcher=batcher,
        embedder=embedder,
        store=store,
        search=SearchService(
            store=store, embedder=embedder, cursor_secret=settings.cursor_key(), max_top_k=settings.max_top_k
        ),
        duplicates=DuplicateService(store=store, default_threshold=settings.duplicate_threshold),
        images=ImageService(store=store, embedder=embedder, uploads=uploads),
        thumbnails=Thumbnails(
            directory=settings.data_dir / "thumbnails", store=store, uploads=uploads, fetcher=encoders.fetcher
        ),
        jobs=ingest.jobs,
        ingest=ingest,
        watched=WatchedFolders(folders=settings.watched_folders, jobs=ingest.jobs, settle_s=settings.watch_settle_s),
    )
