"""Index checkpoints: the FAISS file and the watermarks it covers, switched atomically.

Layout per collection: `index-<n>.faiss` files and a `CHECKPOINT.json` naming the
current one. Both are written to a temp file, fsynced and renamed, the JSON last,
so a crash at any moment leaves the previous checkpoint whole.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss

from index.ann.vector_file import Segment, remove_replaced
from index.ann.vector_index import IndexSpec, VectorIndex
from index.files import atomic_write

log = logging.getLogger(__name__)
POINTER = "CHECKPOINT.json"


@dataclass
class Checkpoint:
    """What an index file covers: every image id <= id_watermark, every tombstone <= tombstone_watermark."""

    id_watermark: int = 0
    tombstone_watermark: int = 0
    count: int = 0
    kind: str = "flat"
    params: dict[str, Any] = field(default_factory=dict)
    dim: int = 0
    hidden: list[int] = field(default_factory=list)
    file: str = ""
    size: int = 0
    model: str = ""
    generation: int = 0
    # Re-rank vector segments beside the index file (index/ann/vector_file.py), as Segment.as_json().
    segments: list[dict[str, Any]] = field(default_factory=list)
    # Search parameters auto-tuning chose for this build, with what it measured (index/ann/tuning.py).
    tuned: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialises checkpoint writers across processes (the server and a CLI ingest, say)."""
    with open(directory / "LOCK", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def locked(directory: Path) -> contextlib.AbstractContextManager[None]:
    """The writers' lock, for a reader that needs the pointer and the files it names to stay put meanwhile
    (a backup copying them): while it is held no checkpoint is written and none of its files is removed."""
    return _locked(directory)


def save(directory: Path, index: VectorIndex, checkpoint: Checkpoint) -> Checkpoint:
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory):
        return _save_locked(directory, index, checkpoint)


def _save_locked(directory: Path, index: VectorIndex, checkpoint: Checkpoint) -> Checkpoint:
    previous = read_pointer(directory)
    old_segments = [Segment.of(s) for s in previous.segments] if previous else []
    if previous is not None and previous.generation > checkpoint.generation:
        log.info("Not checkpointing %s: another process rebuilt it (generation %d)", directory, previous.generation)
        remove_replaced(directory, [Segment.of(s) for s in checkpoint.segments], old_segments)
        return checkpoint
    number = int(previous.file.split("-")[1].split(".")[0]) + 1 if previous and previous.file else 1
    name = f"index-{number}.faiss"
    atomic_write(directory / name, lambda tmp: faiss.write_index(index.index, str(tmp)))
    checkpoint.file = name
    checkpoint.size = (directory / name).stat().st_size
    checkpoint.kind, checkpoint.params, checkpoint.dim = index.spec.kind, index.spec.params, index.dim
    checkpoint.hidden = sorted(index.hidden)
    checkpoint.count = index.count
    atomic_write(directory / POINTER, lambda tmp: tmp.write_text(json.dumps(asdict(checkpoint))))
    for old in directory.glob("index-*.faiss"):
        if old.name != name:
            old.unlink(missing_ok=True)
    remove_replaced(directory, old_segments, [Segment.of(s) for s in checkpoint.segments])
    return checkpoint


def read_pointer(directory: Path) -> Checkpoint | None:
    try:
        return Checkpoint(**json.loads((directory / POINTER).read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        log.warning("Index checkpoint pointer %s is unreadable (%s)", directory / POINTER, exc)
        return None


def _read_mapped(path: Path) -> faiss.Index | None:
    """The index with its storage mapped, or None where FAISS cannot map it (read it normally then)."""
    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
    except RuntimeError as exc:
        log.info("Index file %s cannot be memory-mapped (%s); reading it", path, exc)
        return None


def load(
    directory: Path, *, mmap: bool = False, mmap_kinds: tuple[str, ...] | None = None
) -> tuple[VectorIndex, Checkpoint] | None:
    """The checkpointed index, or None when it is missing or damaged (the caller rebuilds).

    With mmap, the vectors, graph links or inverted lists stay in the file's pages (shared by every
    process that maps it, read on first touch) instead of being copied in: start-up no longer reads
    the whole file. Checkpoint files are never modified in place (each save writes a new file), so
    the mapping stays valid; the index copies itself into memory on its first write.
    """
    checkpoint = read_pointer(directory)
    if checkpoint is None or not checkpoint.file:
        return None
    path = directory / checkpoint.file
    mmap = mmap and (mmap_kinds is None or checkpoint.kind in mmap_kinds)
    handle = None
    try:
        if path.stat().st_size != checkpoint.size:
            raise ValueError(f"size {path.stat().st_size} != recorded {checkpoint.size}")
        raw = None
        if mmap:
            # Mapped through the open handle, so the mapping and the handle are one file even if a
            # newer checkpoint replaces the name meanwhile.
            handle = open(path, "rb")  # noqa: SIM115 - owned by the index until its first write
            raw = _read_mapped(Path(f"/proc/self/fd/{handle.fileno()}"))
            if raw is None:
                handle.close()
                handle = None
        if raw is None:
            raw = faiss.read_index(str(path))
    except (OSError, RuntimeError, ValueError) as exc:
        if handle is not None:
            handle.close()
        log.warning("Index file %s is missing or corrupt (%s)", path, exc)
        return None
    spec = IndexSpec(checkpoint.kind, checkpoint.params)
    index = VectorIndex(spec, checkpoint.dim, raw, set(checkpoint.hidden), mapped=handle)
    if index.count != checkpoint.count or raw.d != checkpoint.dim:
        log.warning("Index file %s holds %d vectors, checkpoint says %d", path, index.count, checkpoint.count)
        if handle is not None:
            handle.close()
        return None
    return index, checkpoint
