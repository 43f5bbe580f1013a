"""The store side of ingestion, shared by every engine: what is skipped, and how a batch is committed and counted.

Engines differ in where items are read and embedded (threads here, Ray actors elsewhere);
what reaches the store, and the summary a run reports, must not depend on the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from app.ingest.sources import Rejected, SourceItem
from index.crud import NewImage
from index.errors import MissingVectorError
from index.store import CollectionInfo, VectorStore


@dataclass
class IngestSummary:
    added: int = 0
    unchanged: int = 0
    duplicates: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def processed(self) -> int:
        return self.added + self.unchanged + self.duplicates + len(self.failed)

    def to_dict(self) -> dict[str, Any]:
        rate = self.added / self.seconds if self.seconds else 0.0
        return {
            "added": self.added,
            "unchanged": self.unchanged,
            "duplicates": self.duplicates,
            "failed": len(self.failed),
            "failures": [{"uri": uri, "reason": reason} for uri, reason in self.failed],
            "seconds": round(self.seconds, 3),
            "images_per_second": round(rate, 2),
        }


Progress = Callable[[IngestSummary], None]
# Called after each committed batch with (collection, items stored or matched to stored content, failures).
BatchObserver = Callable[[str, int, int], None]
# Vectors for content the store lost between embedding and commit, by sha256.
EmbedMissing = Callable[[list[str]], dict[str, np.ndarray]]


def unchanged_uris(store: VectorStore, *, collection_id: int, entries: Iterable[SourceItem | Rejected]) -> set[str]:
    """The uris among `entries` that need no reading: already stored and, for files, of the same size and mtime."""
    items = [e for e in entries if isinstance(e, SourceItem) and e.data is None]
    known = store.known_sources(collection_id, [item.uri for item in items]) if items else {}
    unchanged: set[str] = set()
    for item in items:
        seen = known.get(item.uri)
        # A URL is taken as immutable; a file as unchanged while its size and mtime are.
        if seen is not None and (item.url is not None or (seen[0], seen[1]) == (item.size, item.mtime)):
            unchanged.add(item.uri)
    return unchanged


def image_row(
    item: SourceItem, *, sha256: str, width: int, height: int, format: str | None, byte_size: int,
    vector: np.ndarray | None,
) -> NewImage:
    """The row for one read item; `vector` may be None for content the store already holds."""
    return NewImage(
        sha256=sha256, uri=item.uri, width=width, height=height, format=format, byte_size=byte_size,
        vector=vector, meta=item.metadata, root=str(item.root) if item.root else None, size=item.size, mtime=item.mtime,
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
) -> None:
    """Rows and failures in one transaction, then counted into `summary`."""
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
