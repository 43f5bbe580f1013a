"""A live index's exact vectors for re-ranking: its checkpoint's mapped segments plus the rows
replayed since, which become a new segment at the next checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from index import vector_rows
from index.ann.vector_file import MAX_SEGMENTS, Rows, Segment, SegmentWriter, VectorFile, lookup, write_segment
from index.ann.vector_index import RERANKED_KINDS

log = logging.getLogger(__name__)
# Rows replayed since the checkpoint kept in memory for re-ranking (200 MB at 1024-d); past it,
# the newest rows' vectors are read from the database until the next checkpoint writes them out.
TAIL_MAX_ROWS = 50_000


def segment_stem(generation: int, first_id: int, last_id: int) -> str:
    return f"vectors-g{generation}-{first_id}-{last_id}"


class RerankVectors:
    def __init__(self, directory: Path, dim: int, dtype: str, file: VectorFile | None = None) -> None:
        self.directory = directory
        self.dim = dim
        self.dtype = dtype
        self.file = file
        self._tail: list[Rows] = []
        self._tail_rows = 0

    @property
    def segments(self) -> list[Segment]:
        return list(self.file.segments) if self.file is not None else []

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Keep replayed rows (in id order) for re-ranking until a checkpoint writes them out."""
        if not len(ids) or self._tail_rows + len(ids) > TAIL_MAX_ROWS:
            return
        self._tail = [*self._tail, Rows(np.array(ids, dtype=np.int64), np.array(vectors, dtype=self.dtype))]
        self._tail_rows += len(ids)

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(found ids, their float32 vectors, ids to read from the database)."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.file is not None:
            found, rows, missing = self.file.lookup(ids)
        else:
            found, rows, missing = np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32), ids
        tail = self._tail  # one reference: a checkpoint may swap the list meanwhile
        if len(missing) and tail:
            more, more_rows, missing = lookup(tail, missing, self.dim)
            found, rows = np.concatenate([found, more]), np.concatenate([rows, more_rows])
        return found, rows, missing

    def flush(self, generation: int) -> list[Segment]:
        """Write the pending rows as a segment (merging small ones past MAX_SEGMENTS); the new list.

        Nothing changes in memory until `adopt`, once the checkpoint naming the list is saved.
        """
        segments = self.segments
        tail = self._tail
        if len(segments) + bool(tail) > MAX_SEGMENTS:
            # The first segment is the build's (most rows); the later ones are checkpoint-sized.
            rest = [part for part in (self._read(s) for s in segments[1:]) if len(part.ids)] + tail
            return [segments[0], self._write(generation, rest)] if rest else segments[:1]
        if tail:
            segments.append(self._write(generation, tail))
        return segments

    def adopt(self, segments: list[Segment]) -> None:
        """Map the saved checkpoint's segments and forget the rows they now hold."""
        if [s.stem for s in segments] != [s.stem for s in self.segments]:
            self.file = VectorFile.open(self.directory, self.dim, segments)
        self._tail = []
        self._tail_rows = 0

    def _write(self, generation: int, parts: list[Rows]) -> Segment:
        stem = segment_stem(generation, int(parts[0].ids[0]), int(parts[-1].ids[-1]))
        return write_segment(self.directory, stem, self.dtype, ((p.ids, p.rows) for p in parts))

    def _read(self, segment: Segment) -> Rows:
        opened = VectorFile.open(self.directory, self.dim, [segment])
        if opened is None:
            return Rows(np.zeros(0, np.int64), np.zeros((0, self.dim), self.dtype))
        part = opened.parts[0]
        return Rows(part.ids, np.asarray(part.rows, dtype=self.dtype))


def open_rerank(
    directory: Path, kind: str, dim: int, dtype: str | None, segments: list[Segment]
) -> RerankVectors | None:
    """A compressed index's re-rank vectors over its checkpoint's segments; None where none are kept."""
    if dtype is None or kind not in RERANKED_KINDS:
        return None
    mapped = VectorFile.open(directory, dim, segments) if segments else None
    return RerankVectors(directory, dim, dtype, mapped)


def build_writer(directory: Path, kind: str, dtype: str | None, generation: int, up_to: int) -> SegmentWriter | None:
    """The segment a build of this kind fills as it reads the vectors; None where none is kept."""
    if dtype is None or kind not in RERANKED_KINDS:
        return None
    return SegmentWriter(directory, segment_stem(generation, 0, up_to), dtype)


def backfill(rerank: RerankVectors, session: Session, *, collection_id: int, generation: int, up_to: int) -> Segment:
    """Write the segment a checkpoint from before re-rank files lacks, from the database, and map it."""
    chunks = vector_rows.iter_vectors(session, collection_id=collection_id, up_to=up_to)
    segment = write_segment(rerank.directory, segment_stem(generation, 0, up_to), rerank.dtype, chunks)
    rerank.adopt([segment])
    return segment
