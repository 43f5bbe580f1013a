"""Near-duplicate pairs of a collection: its own vectors searched against its index, block by block.

Memory is bounded by one block of query vectors and the pairs found, whatever the collection's
size. A flat index answers a FAISS range search (exact, BLAS-blocked). The approximate indexes
answer a k-nearest search instead, because their range search fails in two ways: faiss 1.15's
HNSW range search aborts the process (reproduced on 10k x 1024-d), and IVF-PQ's codes misjudge a
0.995 cosine as low as 0.82 (`bench duplicates`), so a range below the threshold either misses
pairs or takes in most of a cluster. An IVF-PQ candidate is scored exactly from its stored vector
before it counts, so what comes back is always a true cosine at or above the threshold.
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

# Small enough that a block's search holds the collection's index lock under a second at 100k x 1024-d
# (searches and ingests wait on it), large enough for FAISS's BLAS-blocked scan.
BLOCK_ROWS = 1024
_IN_CHUNK = 10_000
# Neighbours asked of an approximate index per image: a group larger than this is still joined
# through its members' own neighbours.
CANDIDATES = 16
# An IVF-PQ candidate is checked exactly when its code score is at most this far below the threshold:
# the largest error measured on 1024-d vectors at 64-byte codes was 0.17.
PQ_MARGIN = 0.2

Candidates = tuple[np.ndarray, np.ndarray, np.ndarray]  # query row, partner id, score


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

    A pair usually comes twice (found from both ends); an approximate index may find it from one end only.
    """
    with sessions() as session:
        for ids, vectors in vector_rows.iter_vectors(session, collection_id=collection_id, batch=block or BLOCK_ROWS):
            with live.lock:
                found = _candidates(live, vectors, threshold, nprobe)
                hidden = set(live.index.hidden)  # a copy: deletions may land once the lock is released
            exact = live.index.spec.kind == "ivfpq"  # PQ code scores are estimates: re-score from vectors
            yield from _pairs(session, ids, vectors, found, threshold, hidden, exact=exact)


def _candidates(live: LiveIndex, vectors: np.ndarray, threshold: float, nprobe: int | None) -> Candidates:
    index = live.index
    queries = np.ascontiguousarray(vectors, dtype=np.float32)
    if index.spec.kind == "flat":
        # FAISS reports inner products strictly above the radius; a hair lower keeps "at or above".
        radius = float(np.nextafter(np.float32(threshold), np.float32(-2)))
        limits, scores, labels = index.index.range_search(queries, radius)
        bounds = np.asarray(limits, dtype=np.int64)
        return np.repeat(np.arange(len(queries)), bounds[1:] - bounds[:-1]), labels, scores
    params: faiss.SearchParameters
    if index.spec.kind == "hnsw":
        hnsw = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
        hnsw.efSearch = max(int(index.spec.params["ef_search"]), CANDIDATES)
        params, floor = hnsw, threshold
    else:
        ivf = faiss.SearchParametersIVF()
        ivf.nprobe = int(nprobe or index.spec.params["nprobe"])
        params, floor = ivf, threshold - PQ_MARGIN
    k = min(CANDIDATES + 1, int(index.index.ntotal))  # +1: each image finds itself too
    scores, labels = index.index.search(queries, k, params=params)
    rows = np.repeat(np.arange(len(queries)), k)
    keep = scores.reshape(-1) >= floor
    return rows[keep], labels.reshape(-1)[keep], scores.reshape(-1)[keep]


def _pairs(
    session: Session,
    ids: np.ndarray,
    vectors: np.ndarray,
    found: Candidates,
    threshold: float,
    hidden: set[int],
    *,
    exact: bool,
) -> Iterator[tuple[int, int, float]]:
    rows, right, scores = found
    left = ids[rows]
    keep = (right != left) & (right >= 0)
    if hidden:
        keep &= ~np.isin(right, np.fromiter(hidden, np.int64, len(hidden)))
    rows, left, right, scores = rows[keep], left[keep], right[keep], scores[keep]
    if exact and len(right):
        partner_ids, partner_vectors = _vectors(session, np.unique(right))
        if not len(partner_ids):
            return
        known = np.isin(right, partner_ids)  # a partner deleted since the index was read drops out
        rows, left, right = rows[known], left[known], right[known]
        order = np.argsort(partner_ids)
        at = order[np.searchsorted(partner_ids, right, sorter=order)]
        scores = np.einsum("ij,ij->i", vectors[rows], partner_vectors[at])
    for a, b, s in zip(left.tolist(), right.tolist(), scores.tolist(), strict=True):
        if s >= threshold:
            yield min(a, b), max(a, b), min(1.0, float(s))


def _vectors(session: Session, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    parts = [
        vector_rows.vectors_for(session, image_ids=ids[i : i + _IN_CHUNK].tolist())
        for i in range(0, len(ids), _IN_CHUNK)
    ]
    parts = [(i, v) for i, v in parts if len(i)]
    if not parts:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    return np.concatenate([i for i, _ in parts]), np.concatenate([v for _, v in parts])


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
