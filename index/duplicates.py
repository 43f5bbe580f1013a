"""Near-duplicate pairs of a collection: a FAISS range search of its own vectors, block by block.

Memory is bounded by one block of query vectors and the pairs found, whatever the collection's
size. An approximate index (IVF-PQ scores codes, not vectors) is searched with a margin below the
threshold and every candidate pair is then scored exactly from the stored vectors, so what comes
back is always a true cosine at or above the threshold.
"""

from __future__ import annotations

from collections.abc import Iterator

import faiss
import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from index import vector_rows
from index.live import LiveIndex
from index.models import Image, Source

BLOCK_ROWS = 4096
# How far below the threshold an IVF-PQ candidate may score and still be checked exactly: the
# 64-byte codes of 1024-d unit vectors misjudge a cosine by up to about 0.02.
PQ_MARGIN = 0.03


def near_duplicate_pairs(
    sessions: sessionmaker[Session],
    live: LiveIndex,
    collection_id: int,
    threshold: float,
    *,
    block: int | None = None,
    nprobe: int | None = None,
) -> Iterator[tuple[int, int, float]]:
    """(smaller id, larger id, cosine) of every pair at or above `threshold`.

    A pair usually comes twice (found from both ends); an HNSW graph may find it from one end only.
    """
    approximate = live.index.spec.kind == "ivfpq"
    radius = threshold - PQ_MARGIN if approximate else threshold
    with sessions() as session:
        for ids, vectors in vector_rows.iter_vectors(session, collection_id=collection_id, batch=block or BLOCK_ROWS):
            with live.lock:
                found = _range_search(live, vectors, radius, nprobe)
            yield from _pairs(session, ids, vectors, found, threshold, live.index.hidden, exact=approximate)


def _range_search(
    live: LiveIndex, vectors: np.ndarray, radius: float, nprobe: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    index = live.index
    params = None
    if index.spec.kind == "ivfpq":
        params = faiss.SearchParametersIVF()
        params.nprobe = int(nprobe or index.spec.params["nprobe"])
    # FAISS reports inner products strictly above the radius; a hair lower keeps "at or above".
    limits, scores, labels = index.index.range_search(
        np.ascontiguousarray(vectors, dtype=np.float32), float(np.nextafter(np.float32(radius), -2)), params=params
    )
    return limits, scores, labels


def _pairs(
    session: Session,
    ids: np.ndarray,
    vectors: np.ndarray,
    found: tuple[np.ndarray, np.ndarray, np.ndarray],
    threshold: float,
    hidden: set[int],
    *,
    exact: bool,
) -> Iterator[tuple[int, int, float]]:
    limits, scores, labels = found
    bounds = np.asarray(limits, dtype=np.int64)
    counts = bounds[1:] - bounds[:-1]
    rows = np.repeat(np.arange(len(ids)), counts)
    left, right = ids[rows], labels
    keep = (right != left) & (right >= 0)
    if hidden:
        keep &= ~np.isin(right, np.fromiter(hidden, np.int64, len(hidden)))
    rows, left, right, scores = rows[keep], left[keep], right[keep], scores[keep]
    if exact and len(right):
        partner_ids, partner_vectors = vector_rows.vectors_for(session, image_ids=np.unique(right).tolist())
        order = np.argsort(partner_ids)
        at = order[np.searchsorted(partner_ids, right, sorter=order)]
        scores = np.einsum("ij,ij->i", vectors[rows], partner_vectors[at])
    for a, b, s in zip(left.tolist(), right.tolist(), scores.tolist(), strict=True):
        if s >= threshold:
            yield min(a, b), max(a, b), min(1.0, float(s))


def shared_content(session: Session, *, collection_id: int, limit: int) -> list[tuple[int, list[str]]]:
    """Images stored once for identical bytes (one sha256) found at several uris: (image id, uris)."""
    many = (
        select(Source.image_id)
        .where(Source.collection_id == collection_id)
        .group_by(Source.image_id)
        .having(func.count() > 1)
        .order_by(Source.image_id)
        .limit(limit)
    )
    image_ids = list(session.scalars(many))
    rows = session.execute(
        select(Source.image_id, Source.uri).where(Source.image_id.in_(image_ids)).order_by(Source.image_id, Source.uri)
    ).all()
    out: dict[int, list[str]] = {image_id: [] for image_id in image_ids}
    for image_id, uri in rows:
        out[image_id].append(uri)
    stored = set(session.scalars(select(Image.id).where(Image.id.in_(image_ids))))
    return [(image_id, uris) for image_id, uris in out.items() if image_id in stored]
