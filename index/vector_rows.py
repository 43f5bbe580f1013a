"""Reads of the stored vectors: by id, in id order and in batches, or a random sample.

Index builds, catch-up replays, exact re-ranking and IVF-PQ training read vectors here, and
nowhere else, so where the vectors live is one module's business.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from index.errors import ImageNotFoundError
from index.models import Image, ImageVector


def _as_matrix(blobs: Sequence[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), -1)


def iter_vectors(
    session: Session, *, collection_id: int, after_id: int = 0, up_to: int | None = None, batch: int = 10_000
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, vectors) in id order, in batches, for rows with after_id < id <= up_to."""
    last = after_id
    bound = [Image.id <= up_to] if up_to is not None else []
    while True:
        rows = session.execute(
            select(Image.id, ImageVector.vector)
            .join(ImageVector, ImageVector.image_id == Image.id)
            .where(Image.collection_id == collection_id, Image.id > last, *bound)
            .order_by(Image.id)
            .limit(batch)
        ).all()
        if not rows:
            return
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vectors = _as_matrix([r[1] for r in rows])
        yield ids, vectors
        last = int(ids[-1])


def vectors_for(session: Session, *, image_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    rows = session.execute(
        select(ImageVector.image_id, ImageVector.vector).where(ImageVector.image_id.in_(list(image_ids)))
    ).all()
    if not rows:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    return ids, _as_matrix([r[1] for r in rows])


def vector_of(session: Session, *, image_id: int) -> tuple[int, np.ndarray]:
    """(collection id, vector) of one stored image."""
    row = session.execute(
        select(Image.collection_id, ImageVector.vector)
        .join(ImageVector, ImageVector.image_id == Image.id)
        .where(Image.id == image_id)
    ).one_or_none()
    if row is None:
        raise ImageNotFoundError(image_id)
    return row[0], np.frombuffer(row[1], dtype=np.float32)


def training_sample(session: Session, *, collection_id: int, rows: int, batch: int = 10_000) -> np.ndarray:
    """`rows` random vectors of a collection (fewer if rows are deleted meanwhile)."""
    return random_rows(session, collection_id=collection_id, rows=rows, batch=batch)[1]


def random_rows(
    session: Session, *, collection_id: int, rows: int, batch: int = 10_000
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of `rows` random images, read by id so the ordering never carries the vectors.

    Ordering by random() over (id) alone keeps the sort small; the vectors are then fetched in batches.
    """
    ids = sorted(
        session.scalars(
            select(Image.id).where(Image.collection_id == collection_id).order_by(func.random()).limit(rows)
        )
    )
    out: np.ndarray | None = None
    got: list[np.ndarray] = []
    filled = 0
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        found = session.execute(
            select(ImageVector.image_id, ImageVector.vector).where(ImageVector.image_id.in_(chunk))
        ).all()
        if not found:
            continue
        part = _as_matrix([r[1] for r in found])
        if out is None:  # filled in place: the sample is never held twice
            out = np.empty((len(ids), part.shape[1]), np.float32)
        out[filled : filled + len(part)] = part
        got.append(np.fromiter((r[0] for r in found), dtype=np.int64, count=len(found)))
        filled += len(part)
    if out is None:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    # Rows deleted between reading the ids and their vectors come back short: use what was read.
    return np.concatenate(got), out[:filled]
