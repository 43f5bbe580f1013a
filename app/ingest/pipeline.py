"""The ingest pipeline: reader -> decode threads -> batched model -> one transaction per batch.

Unchanged files (same path, size and mtime) are skipped before they are read. Decoding
and PE preprocessing run in worker threads ahead of the model; content already stored
(same sha256) gets a new source row but no second embedding. A bad item is recorded
and skipped; nothing stops the run but the source itself.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from app.errors import ImageLoadError, PayloadTooLargeError
from app.ingest.near_duplicates import NearDuplicatePolicy
from app.ingest.sources import Rejected, SourceItem
from app.ingest.writer import (
    BatchObserver,
    IngestSummary,
    Progress,
    RunClock,
    chunks,
    commit_batch,
    embed_unique,
    image_row,
    unchanged_uris,
)
from app.media.decode import decode_reduced, image_format
from app.media.fetch import UrlFetcher
from app.media.objects import ObjectStorage
from app.model.encoder import PEEncoder
from app.settings import Settings
from index.dto import CollectionInfo, NewImage
from index.store import VectorStore

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """An item read, hashed, decoded and preprocessed: ready for the model."""

    item: SourceItem
    sha256: str
    width: int
    height: int
    format: str | None
    byte_size: int
    pixels: np.ndarray


@dataclass
class _Unchanged:
    item: SourceItem


Outcome = Prepared | _Unchanged | Rejected


def _done(value: Outcome) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


class Preparer:
    """Read, decode and PE-preprocess one item: the steps any engine runs where the bytes are."""

    def __init__(
        self,
        *,
        encoder: PEEncoder,
        fetcher: UrlFetcher,
        objects: ObjectStorage | None = None,
        jpeg_draft: bool = True,
    ) -> None:
        self.encoder = encoder
        self.fetcher = fetcher
        self.objects = objects or ObjectStorage()
        # Large JPEGs decode at reduced DCT scale, never below the model's input size.
        self.min_side = encoder.variant.image_size if jpeg_draft else None

    def prepare(self, item: SourceItem) -> Prepared | Rejected:
        try:
            data, item = self._read(item)
            decoded = decode_reduced(data, min_side=self.min_side)
            return Prepared(
                item=item,
                sha256=hashlib.sha256(data).hexdigest(),
                width=decoded.width,
                height=decoded.height,
                format=image_format(data),
                byte_size=len(data),
                pixels=self.encoder.transform(decoded.image),
            )
        except ImageLoadError as exc:
            return Rejected(item.uri, exc.cause)
        except PayloadTooLargeError as exc:  # an object over MAX_IMAGE_BYTES, refused before its body is read
            return Rejected(item.uri, str(exc))
        except OSError as exc:
            return Rejected(item.uri, f"cannot read the file ({exc.strerror or exc})")
        except Exception as exc:  # noqa: BLE001 - one bad item must never stop the run
            log.exception("Unexpected failure preparing %s", item.uri)
            return Rejected(item.uri, f"unexpected error: {type(exc).__name__}")

    def _read(self, item: SourceItem) -> tuple[bytes, SourceItem]:
        """The item's bytes, and the item with what reading it told (an object's ETag and size)."""
        if item.data is not None:
            return item.data, item
        if item.url is not None:
            return self.fetcher.fetch(item.url), item
        if item.object_url is not None:
            data, etag = self.objects.read(item.object_url)
            return data, replace(item, etag=item.etag or etag, size=len(data))
        assert item.path is not None
        return item.path.read_bytes(), item


class Ingestor:
    def __init__(
        self,
        *,
        store: VectorStore,
        encoder: PEEncoder,
        fetcher: UrlFetcher,
        objects: ObjectStorage | None = None,
        batch_size: int = 32,
        workers: int = 4,
        jpeg_draft: bool = True,
        on_batch: BatchObserver | None = None,
        near_duplicates: NearDuplicatePolicy | None = None,
    ) -> None:
        self.near_duplicates = near_duplicates
        self.store = store
        self.encoder = encoder
        self.fetcher = fetcher
        self.preparer = Preparer(encoder=encoder, fetcher=fetcher, objects=objects, jpeg_draft=jpeg_draft)
        self.batch_size = batch_size
        self.workers = workers
        self.on_batch = on_batch

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        store: VectorStore,
        encoder: PEEncoder,
        fetcher: UrlFetcher,
        batch_size: int | None = None,
        on_batch: BatchObserver | None = None,
        near_duplicates: NearDuplicatePolicy | None = None,
    ) -> Ingestor:
        """The engine as configured (PE_SEARCH_INGEST_*), for the CLI and server-side jobs alike."""
        return cls(
            store=store,
            encoder=encoder,
            fetcher=fetcher,
            objects=ObjectStorage(settings.object_policy()),
            batch_size=batch_size or settings.ingest_batch,
            workers=settings.ingest_workers,
            jpeg_draft=settings.ingest_jpeg_draft,
            on_batch=on_batch,
            near_duplicates=near_duplicates,
        )

    def run(
        self,
        items: Iterable[SourceItem | Rejected],
        *,
        collection: str,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> IngestSummary:
        info = self.store.ensure_collection(
            collection, model=self.encoder.variant.version_id, dim=self.encoder.variant.dim
        )
        summary = IngestSummary()
        batch: list[Prepared] = []
        rejected: list[Rejected] = []
        with RunClock(store=self.store, collection=collection, summary=summary, progress=progress) as clock:
            for outcome in self._outcomes(items, info.id):
                if isinstance(outcome, _Unchanged):
                    summary.unchanged += 1
                elif isinstance(outcome, Rejected):
                    rejected.append(outcome)
                else:
                    batch.append(outcome)
                if len(batch) >= self.batch_size or len(rejected) >= self.batch_size:
                    self._write(info, batch, rejected, summary)
                    batch, rejected = [], []
                    clock.committed()
                if cancel is not None and cancel.is_set():
                    break
            self._write(info, batch, rejected, summary)
        return summary

    def _outcomes(self, items: Iterable[SourceItem | Rejected], collection_id: int) -> Iterator[Outcome]:
        """Outcomes in input order, decoding up to two batches ahead of the consumer."""
        ahead = 2 * self.batch_size
        with ThreadPoolExecutor(self.workers, thread_name_prefix="pe-decode") as pool:
            pending: deque[Future] = deque()
            for chunk in chunks(items, 256):
                for entry in self._skip_unchanged(chunk, collection_id):
                    pending.append(
                        pool.submit(self.preparer.prepare, entry) if isinstance(entry, SourceItem) else _done(entry)
                    )
                    while len(pending) > ahead:
                        yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    def _skip_unchanged(self, chunk: list[SourceItem | Rejected], collection_id: int) -> list[SourceItem | Outcome]:
        unchanged = unchanged_uris(self.store, collection_id=collection_id, entries=chunk)
        return [_Unchanged(e) if isinstance(e, SourceItem) and e.uri in unchanged else e for e in chunk]

    def _write(
        self, info: CollectionInfo, batch: list[Prepared], rejected: list[Rejected], summary: IngestSummary
    ) -> None:
        if not batch and not rejected:
            return
        pixels = [(p.sha256, p.pixels) for p in batch]
        stored = self.store.existing_shas(info.id, [sha256 for sha256, _ in pixels])
        vectors = embed_unique(self.encoder, [pair for pair in pixels if pair[0] not in stored])
        commit_batch(
            self.store,
            info=info,
            rows=self._rows(batch, vectors),
            failures=[(r.uri, r.reason) for r in rejected],
            summary=summary,
            on_batch=self.on_batch,
            embed_missing=lambda shas: embed_unique(self.encoder, [pair for pair in pixels if pair[0] in set(shas)]),
            near=self.near_duplicates,
        )

    @staticmethod
    def _rows(batch: list[Prepared], vectors: dict[str, np.ndarray]) -> list[NewImage]:
        return [
            image_row(
                p.item,
                sha256=p.sha256,
                width=p.width,
                height=p.height,
                format=p.format,
                byte_size=p.byte_size,
                vector=vectors.get(p.sha256),
            )
            for p in batch
        ]
