"""Re-rank vectors in memory-mapped files beside an index checkpoint.

A compressed index (IVF-PQ) ranks by approximate codes; its top k x rerank candidates are then
scored exactly. Reading those candidates' vectors back from the database costs about 15 ms per
query at 1M rows (random 4 KB reads through SQL); reading them from a mapped file is a gather
from the page cache. The file is derived data, like the index: written in segments (one per
rebuild, then one per checkpoint for the rows added since), named in CHECKPOINT.json and covered
by its watermark. Any id a segment lacks is read from the database, so a missing, damaged or
disabled file costs speed, never correctness.

A segment is two files: `<stem>.ids.npy` (sorted int64 ids, read into memory: 8 bytes a row)
and `<stem>.<dtype>` (raw rows of `dim` float32 or float16 values, mapped).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index.files import atomic_write, fsync_dir

log = logging.getLogger(__name__)
DTYPES = ("float32", "float16")
# Segments beyond this are merged into one at the next checkpoint: lookups search each segment.
MAX_SEGMENTS = 8


@dataclass(frozen=True)
class Segment:
    stem: str
    rows: int
    dtype: str

    def as_json(self) -> dict[str, Any]:
        return {"stem": self.stem, "rows": self.rows, "dtype": self.dtype}

    @classmethod
    def of(cls, raw: dict[str, Any]) -> Segment:
        return cls(str(raw["stem"]), int(raw["rows"]), str(raw["dtype"]))


class Rows:
    """Sorted ids and their vectors (a mapped segment, or rows held in memory)."""

    def __init__(self, ids: np.ndarray, rows: np.ndarray) -> None:
        self.ids = ids
        self.rows = rows


class VectorFile:
    """The mapped segments of one checkpoint, looked up by id."""

    def __init__(self, directory: Path, dim: int, segments: list[Segment], parts: list[Rows]) -> None:
        self.directory = directory
        self.dim = dim
        self.segments = segments
        self.parts = parts

    @classmethod
    def open(cls, directory: Path, dim: int, segments: list[Segment]) -> VectorFile | None:
        """The mapped segments, or None (and a warning) when any is missing or of the wrong size."""
        parts = []
        try:
            for seg in segments:
                ids = np.load(directory / f"{seg.stem}.ids.npy")
                path = directory / f"{seg.stem}.{seg.dtype}"
                expected = seg.rows * dim * np.dtype(seg.dtype).itemsize
                if len(ids) != seg.rows or path.stat().st_size != expected:
                    raise ValueError(f"{path.name}: {len(ids)} ids, {path.stat().st_size} bytes, expected {expected}")
                rows = np.memmap(path, dtype=seg.dtype, mode="r", shape=(seg.rows, dim)) if seg.rows else None
                parts.append(Rows(ids, rows if rows is not None else np.zeros((0, dim), seg.dtype)))
        except (OSError, ValueError) as exc:
            log.warning("Re-rank vectors in %s are unusable (%s); re-ranking reads the database", directory, exc)
            return None
        return cls(directory, dim, segments, parts)

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(found ids, their float32 vectors, ids not in any segment)."""
        return lookup(self.parts, np.asarray(ids, dtype=np.int64), self.dim)


def lookup(parts: Iterable[Rows], ids: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Find ids in parts that have sorted `ids` and matching `rows`; (found, vectors, missing)."""
    found_ids, found_rows = [], []
    missing = ids
    for part in parts:
        if not len(missing) or not len(part.ids):
            continue
        pos = np.minimum(np.searchsorted(part.ids, missing), len(part.ids) - 1)
        hit = part.ids[pos] == missing
        if hit.any():
            # Fancy indexing a memmap reads only the touched rows, in file order for the page cache.
            order = np.sort(pos[hit])
            found_ids.append(part.ids[order])
            found_rows.append(np.asarray(part.rows[order], dtype=np.float32))
        missing = missing[~hit]
    if not found_ids:
        return np.zeros(0, np.int64), np.zeros((0, dim), np.float32), missing
    return np.concatenate(found_ids), np.concatenate(found_rows), missing


class SegmentWriter:
    """Rows appended in id order to a new segment; `finish` makes it whole (fsynced, renamed)."""

    def __init__(self, directory: Path, stem: str, dtype: str) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"re-rank vectors are {' or '.join(DTYPES)}, not {dtype!r}")
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.stem, self.dtype = directory, stem, dtype
        fd, name = tempfile.mkstemp(dir=directory, prefix=f".{stem}.", suffix=".tmp")
        self._tmp = Path(name)
        self._out = os.fdopen(fd, "wb")
        self._ids: list[np.ndarray] = []
        self._last = 0

    def append(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if not len(ids):
            return
        if int(ids[0]) <= self._last or np.any(np.diff(ids) <= 0):
            raise ValueError("segment rows must come in increasing id order")
        self._last = int(ids[-1])
        self._ids.append(np.asarray(ids, dtype=np.int64))
        self._out.write(np.ascontiguousarray(vectors, dtype=self.dtype).tobytes())

    def finish(self) -> Segment:
        self._out.flush()
        os.fsync(self._out.fileno())
        self._out.close()
        ids = np.concatenate(self._ids) if self._ids else np.zeros(0, np.int64)
        atomic_write(self.directory / f"{self.stem}.ids.npy", lambda tmp: _save_npy(tmp, ids))
        os.replace(self._tmp, self.directory / f"{self.stem}.{self.dtype}")
        fsync_dir(self.directory)
        return Segment(self.stem, len(ids), self.dtype)

    def abort(self) -> None:
        self._out.close()
        self._tmp.unlink(missing_ok=True)


def write_segment(directory: Path, stem: str, dtype: str, chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> Segment:
    """A whole segment from (ids, vectors) chunks in id order; nothing is left behind if it fails."""
    writer = SegmentWriter(directory, stem, dtype)
    try:
        for ids, vectors in chunks:
            writer.append(ids, vectors)
        return writer.finish()
    except BaseException:
        writer.abort()
        raise


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a path would get ".npy" appended by np.save
        np.save(handle, array, allow_pickle=False)


def tee(
    chunks: Iterable[tuple[np.ndarray, np.ndarray]], writer: SegmentWriter
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The chunks, each also appended to the writer (a build fills its index and its segment in one read)."""
    for ids, vectors in chunks:
        writer.append(ids, vectors)
        yield ids, vectors


def remove_replaced(directory: Path, old: list[Segment], keep: list[Segment]) -> None:
    """Delete the files of the previous checkpoint's segments that the new one no longer names.

    Only those: a file no checkpoint names may be another process's build in progress.
    Processes that mapped a deleted file keep reading it until they reload.
    """
    kept = {s.stem for s in keep}
    for seg in old:
        if seg.stem not in kept:
            (directory / f"{seg.stem}.ids.npy").unlink(missing_ok=True)
            (directory / f"{seg.stem}.{seg.dtype}").unlink(missing_ok=True)
