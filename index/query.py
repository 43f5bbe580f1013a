"""Query planning: which of filter-exact, index search, re-rank and under-fill fallback answers a search."""

from __future__ import annotations

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from index import crud, vector_rows
from index.dto import Hit
from index.filters import SearchFilter
from index.live import LiveIndex

# Below this many filter matches, an approximate index's filtered search is replaced by exact
# scoring of the matches' stored vectors (40 MB of reads at 1024-d); a flat index is exact anyway.
EXACT_FILTER_LIMIT = 10_000
_IN_CHUNK = 10_000


def _cosine(score: float) -> float:
    # float32 rounding can put an image's score against itself a hair above 1.
    return min(1.0, max(-1.0, float(score)))


class QueryPlanner:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def search(
        self,
        live: LiveIndex,
        collection_id: int,
        query: np.ndarray,
        k: int,
        search_filter: SearchFilter | None = None,
        min_score: float | None = None,
        **knobs: int,
    ) -> list[Hit]:
        query = np.asarray(query, dtype=np.float32)
        allowed = None
        if search_filter is not None and not search_filter.empty:
            with self.sessions() as session:
                allowed = crud.filtered_ids(session, collection_id=collection_id, search_filter=search_filter)
            if live.index.spec.kind != "flat" and len(allowed) <= EXACT_FILTER_LIMIT:
                return _above(self.exact(allowed, query, k), min_score)
        rerank = live.index.spec.kind == "ivfpq"
        fetch_k = k * int(live.index.spec.params.get("rerank", 1)) if rerank else k
        with live.lock:
            scores, ids = live.index.search(query, fetch_k, allowed, **knobs)
        if rerank and len(ids):
            hits = self.exact(ids, query, k)
        else:
            hits = [Hit(int(i), _cosine(s)) for s, i in zip(scores, ids, strict=True)]
        if allowed is not None and len(hits) < min(k, len(allowed)):
            hits = self.exact(allowed, query, k)  # the approximate index under-filled a filtered query
        return _above(hits, min_score)

    def exact(self, candidate_ids: np.ndarray, query: np.ndarray, k: int) -> list[Hit]:
        """The top k of the candidates by the exact cosine of their stored vectors."""
        ids_all, scores_all = [], []
        with self.sessions() as session:
            for start in range(0, len(candidate_ids), _IN_CHUNK):
                chunk = [int(i) for i in candidate_ids[start : start + _IN_CHUNK]]
                ids, vectors = vector_rows.vectors_for(session, image_ids=chunk)
                if len(ids):
                    ids_all.append(ids)
                    scores_all.append(vectors @ query)
        if not ids_all:
            return []
        ids, scores = np.concatenate(ids_all), np.concatenate(scores_all)
        top = np.argsort(-scores, kind="stable")[:k]
        return [Hit(int(ids[i]), _cosine(scores[i])) for i in top]


def _above(hits: list[Hit], min_score: float | None) -> list[Hit]:
    return [h for h in hits if min_score is None or h.score >= min_score]
