"""The store side of ingestion, shared by every engine: what is skipped, and how a batch is committed and counted.

Engines differ in where items are read and embedded (threads here, Ray actors elsewhere);
what reaches the store, and the summary a run reports, must not depend on the engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from app.ingest.near_duplicates import NearDuplicate, NearDuplicatePolicy, screen
from app.ingest.sources import Rejected, SourceItem
from index.dto import CollectionInfo, KnownSource, NewImage
from index.errors import MissingVectorError
from index.store import VectorStore

if TYPE_CHECKING:
    from app.model.encoder import PEEncoder

# A crash loses at most this much indexing work: the vectors are in the database anyway.
CHECKPOINT_EVERY_SECONDS = 60.0
NEAR_LISTED = 1000


@dataclass
class IngestSummary:
    added: int = 0
    unchanged: int = 0
    duplicates: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    near_duplicates: list[NearDuplicate] = field(default_factory=list)
    near_found: int = 0
    near_skipped: int = 0
    # Sources forgotten because their file was deleted (watched folders, pruned folders).
    removed: int = 0

    @property
    def processed(self) -> int:
        return self.added + self.unchanged + self.duplicates + len(self.failed) + self.near_skipped

    def to_dict(self) -> dict[str, Any]:
        rate = self.added / self.seconds if self.seconds else 0.0
        return {
            "added": self.added,
            "unchanged": self.unchanged,
            "duplicates": self.duplicates,
            "failed": len(self.failed),
            "failures": [{"uri": uri, "reason": reason} for uri, reason in self.failed],
            "near_duplicates": [
                {"uri": n.uri, "of_id": n.of_id, "of_uri": n.of_uri, "score": round(n.score, 4)}
                for n in self.near_duplicates
            ],
            "near_duplicates_found": self.near_found,
            "near_duplicates_skipped": self.near_skipped,
            "removed": self.removed,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(rate, 2),
        }


Progress = Callable[[IngestSummary], None]
# Called after each committed batch with (collection, items stored or matched to stored content, failures).
BatchObserver = Callable[[str, int, int], None]
# Vectors for content the store lost between embedding and commit, by sha256.
EmbedMissing = Callable[[list[str]], dict[str, np.ndarray]]


class RunClock:
    """What follows each committed batch in every engine: the run's time and progress, and an index checkpoint a minute.

    As a context manager it checkpoints once more on the way out, also when the run stops on
    an error, so the saved index holds every committed batch; progress is reported last on success.
    """

    def __init__(
        self,
        *,
        store: VectorStore,
        collection: str,
        summary: IngestSummary,
        progress: Progress | None = None,
        every: float = CHECKPOINT_EVERY_SECONDS,
    ) -> None:
        self.store = store
        self.collection = collection
        self.summary = summary
        self.progress = progress
        self.every = every
        self.started = self.last_checkpoint = time.monotonic()

    def report(self) -> None:
        self.summary.seconds = time.monotonic() - self.started
        if self.progress:
            self.progress(self.summary)

    def committed(self) -> None:
        """After a batch: progress, and a checkpoint once `every` seconds have passed since the last one."""
        self.report()
        if time.monotonic() - self.last_checkpoint > self.every:
            self.store.checkpoint(self.collection)
            self.last_checkpoint = time.monotonic()

    def __enter__(self) -> RunClock:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.store.checkpoint(self.collection)
        if kind is None:
            self.report()


def embed_unique(encoder: PEEncoder, pixels: Iterable[tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """A vector per sha256 of the (sha256, pixels) pairs: content repeated in a batch goes through the model once."""
    unique: dict[str, np.ndarray] = {}
    for sha256, tensor in pixels:
        unique.setdefault(sha256, tensor)
    if not unique:
        return {}
    return dict(zip(unique, encoder.embed_pixels(list(unique.values())), strict=True))


def unchanged_uris(store: VectorStore, *, collection_id: int, entries: Iterable[SourceItem | Rejected]) -> set[str]:
    """The uris among `entries` that need no reading: already stored and, for files, of the same size and mtime."""
    items = [e for e in entries if isinstance(e, SourceItem) and e.data is None]
    known = store.known_sources(collection_id, [item.uri for item in items]) if items else {}
    return {item.uri for item in items if item.uri in known and _same(item, known[item.uri])}


def _same(item: SourceItem, seen: KnownSource) -> bool:
    """A URL is taken as immutable; a file as unchanged while its size and mtime are; an object while its
    ETag and size are (an object without a listed ETag, from a manifest, is read again: hashing it tells)."""
    if item.url is not None:
        return True
    if item.object_url is not None:
        return item.etag is not None and (item.etag, item.size) == (seen.etag, seen.size)
    return (item.size, item.mtime) == (seen.size, seen.mtime)


def image_row(
    item: SourceItem,
    *,
    sha256: str,
    width: int,
    height: int,
    format: str | None,
    byte_size: int,
    vector: np.ndarray | None,
) -> NewImage:
    """The row for one read item; `vector` may be None for content the store already holds."""
    return NewImage(
        sha256=sha256,
        uri=item.uri,
        width=width,
        height=height,
        format=format,
        byte_size=byte_size,
        vector=vector,
        meta=item.metadata,
        root=str(item.root) if item.root else None,
        size=item.size,
        mtime=item.mtime,
        etag=item.etag,
    )


def commit_batch(
    store: VectorStore,
    *,
    info: CollectionInfo,
    rows: Sequence[NewImage],
    failures: Sequence[tuple[str, str]],
    summary: IngestSummary,
    on_batch: BatchObserver | None = None,
    embed_missing: EmbedMissing | None = None,
    near: NearDuplicatePolicy | None = None,
) -> None:
    """Rows and failures in one transaction, then counted into `summary`; `near` screens near-duplicates first."""
    if near is not None and rows:
        kept, found = screen(store, info, rows, near)
        summary.near_found += len(found)
        # The first ones, itemised; a library of thousands of near-copies is counted, not listed.
        summary.near_duplicates.extend(found[: max(0, NEAR_LISTED - len(summary.near_duplicates))])
        summary.near_skipped += len(rows) - len(kept)
        rows = kept
    if not rows and not failures:
        return
    try:
        results = store.add_images(info.id, rows, failures)
    except MissingVectorError as exc:
        if embed_missing is None:
            raise
        # Content deleted between the embedding and the commit: embed it too, and commit again.
        vectors = embed_missing(list(exc.shas))
        rows = [replace(row, vector=vectors[row.sha256]) if row.sha256 in vectors else row for row in rows]
        results = store.add_images(info.id, rows, failures)
    for _, created in results:
        if created:
            summary.added += 1
        else:
            summary.duplicates += 1
    summary.failed.extend(failures)
    if on_batch is not None:
        on_batch(info.name, len(results), len(failures))


def chunks(items: Iterable, size: int) -> Iterator[list]:
    """Lists of up to `size` items, so a source of any length is checked against the store a chunk at a time."""
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
