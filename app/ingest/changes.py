"""Applying a folder's changes to a collection: changed files ingested, deleted ones forgotten.

Shared by `pe-search ingest DIR --watch` and the server's watched folders (as `changes` jobs).
A deleted file's source is removed; its image goes too once no other source points at it.
Only a file that is truly gone (ENOENT) counts as deleted: one that cannot be read right now
(permissions, a stale network handle) keeps its image.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from app.errors import SourceError
from app.ingest.pipeline import Ingestor, Progress
from app.ingest.sources import Rejected, SourceItem, file_item, folder_items
from app.ingest.writer import IngestSummary
from index.store import VectorStore

log = logging.getLogger(__name__)
_REMOVE_CHUNK = 1000


def apply_changes(
    ingestor: Ingestor,
    *,
    collection: str,
    root: Path,
    upserts: Sequence[Path],
    deletes: Sequence[Path],
    deleted_dirs: Sequence[Path] = (),
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> IngestSummary:
    root = root.resolve()
    items: Iterator[SourceItem | Rejected] = (file_item(path, root) for path in upserts if path.exists())
    summary = ingestor.run(items, collection=collection, progress=progress, cancel=cancel)
    gone = [str(_absolute(p)) for p in deletes]
    store = ingestor.store
    collection_id = store.collection(collection, exact_count=False).id
    for folder in deleted_dirs:
        gone += [uri for uri in store.iter_source_uris(collection_id, str(_absolute(folder))) if is_gone(uri)]
    summary.removed += forget(store, collection_id, gone)
    return summary


def sync_folder(
    ingestor: Ingestor,
    *,
    collection: str,
    root: Path,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> IngestSummary:
    """The whole folder ingested (unchanged files skipped), then every file known under it but gone since forgotten.

    A folder found empty while the collection knows files in it is refused rather than emptied: that is
    what an unmounted share looks like.
    """
    root = root.resolve()
    summary = ingestor.run(folder_items(root), collection=collection, progress=progress, cancel=cancel)
    if cancel is not None and cancel.is_set():
        return summary
    store = ingestor.store
    collection_id = store.collection(collection, exact_count=False).id
    known = list(store.iter_source_uris(collection_id, str(root)))
    gone = [uri for uri in known if is_gone(uri)]
    if known and len(gone) == len(known) and summary.processed == 0:
        raise SourceError(
            f"{root} holds no images now but images were ingested from it: not removing them "
            "(is the folder or share mounted?); delete them with `pe-search delete` if they are really gone"
        )
    summary.removed += forget(store, collection_id, gone)
    return summary


def forget(store: VectorStore, collection_id: int, uris: Sequence[str]) -> int:
    removed = 0
    for start in range(0, len(uris), _REMOVE_CHUNK):
        removed += store.remove_sources(collection_id, uris[start : start + _REMOVE_CHUNK])[0]
    if removed:
        log.info("Collection %d: %d sources of deleted files removed", collection_id, removed)
    return removed


def is_gone(uri: str) -> bool:
    try:
        os.lstat(uri)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return False


def _absolute(path: Path) -> Path:
    """A deleted path's uri as it was ingested: resolved through its (still existing) folders."""
    return path.parent.resolve() / path.name
