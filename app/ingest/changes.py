"""Applying a folder's changes to a collection: changed files ingested, deleted ones forgotten.

Shared by `pe-search ingest DIR --watch` and the server's watched folders (as `changes` jobs).
A deleted file's source is removed; its image goes too once no other source points at it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from app.ingest.pipeline import Ingestor, Progress
from app.ingest.sources import Rejected, SourceItem, file_item, folder_items
from app.ingest.writer import IngestSummary

_REMOVE_CHUNK = 1000


def apply_changes(
    ingestor: Ingestor,
    *,
    collection: str,
    root: Path,
    upserts: Sequence[Path],
    deletes: Sequence[Path],
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> IngestSummary:
    root = root.resolve()
    items: Iterator[SourceItem | Rejected] = (file_item(path, root) for path in upserts if path.exists())
    summary = ingestor.run(items, collection=collection, progress=progress, cancel=cancel)
    summary.removed += forget(ingestor, collection=collection, uris=[str(_absolute(p)) for p in deletes])
    return summary


def sync_folder(
    ingestor: Ingestor,
    *,
    collection: str,
    root: Path,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> IngestSummary:
    """The whole folder ingested (unchanged files skipped), then every file known under it but gone since forgotten."""
    root = root.resolve()
    summary = ingestor.run(folder_items(root), collection=collection, progress=progress, cancel=cancel)
    if cancel is not None and cancel.is_set():
        return summary
    info = ingestor.store.collection(collection, exact_count=False)
    gone = [uri for uri in ingestor.store.iter_source_uris(info.id, str(root)) if not os.path.lexists(uri)]
    summary.removed += forget(ingestor, collection=collection, uris=gone)
    return summary


def forget(ingestor: Ingestor, *, collection: str, uris: Sequence[str]) -> int:
    if not uris:
        return 0
    info = ingestor.store.collection(collection, exact_count=False)
    removed = 0
    for start in range(0, len(uris), _REMOVE_CHUNK):
        removed += ingestor.store.remove_sources(info.id, uris[start : start + _REMOVE_CHUNK])[0]
    return removed


def _absolute(path: Path) -> Path:
    """A deleted file's uri as it was ingested: resolved through its (still existing) folders."""
    return path.parent.resolve() / path.name
