"""Exact cosine scoring of candidate ids: from a live index's mapped re-rank vectors where it has
them, from the database for the rest."""

from __future__ import annotations

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from index import vector_rows
from index.dto import Hit
from index.rerank_vectors import RerankVectors

_IN_CHUNK = 10_000


def cosine(score: float) -> float:
    # float32 rounding can put an image's score against itself a hair above 1.
    return min(1.0, max(-1.0, float(score)))


def exact_top(
    sessions: sessionmaker[Session], candidate_ids: np.ndarray, query: np.ndarray, k: int, rerank: RerankVectors | None
) -> list[Hit]:
    """The top k of the candidates by the exact cosine of their stored vectors."""
    ids_all, scores_all = [], []
    missing = np.asarray(candidate_ids, dtype=np.int64)
    if rerank is not None and len(missing):
        found, vectors, missing = rerank.lookup(missing)
        if len(found):
            ids_all.append(found)
            scores_all.append(vectors @ query)
    if len(missing):
        with sessions() as session:
            for start in range(0, len(missing), _IN_CHUNK):
                chunk = [int(i) for i in missing[start : start + _IN_CHUNK]]
                ids, vectors = vector_rows.vectors_for(session, image_ids=chunk)
                if len(ids):
                    ids_all.append(ids)
                    scores_all.append(vectors @ query)
    if not ids_all:
        return []
    ids, scores = np.concatenate(ids_all), np.concatenate(scores_all)
    # Ties broken by id, so a file-backed and a database-backed re-rank give one order.
    top = np.lexsort((ids, -scores))[:k]
    return [Hit(int(ids[i]), cosine(scores[i])) for i in top]
