"""Query planning: which of filter-exact, index search, re-rank and under-fill fallback answers a search."""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from index import crud
from index.ann.vector_index import RERANKED_KINDS
from index.dto import Hit
from index.exact import cosine, exact_top
from index.filters import SearchFilter
from index.live import LiveIndex

# Below this many filter matches, an approximate index's filtered search is replaced by exact
# scoring of the matches' stored vectors (40 MB of reads at 1024-d); a flat index is exact anyway.
EXACT_FILTER_LIMIT = 10_000


def search_knobs(live: LiveIndex, knobs: dict[str, int]) -> dict[str, int]:
    """The index's settings for one query: the query's own knobs, else the tuned ones, else the spec's."""
    tuned: dict[str, Any] = live.checkpoint.tuned.get("params", {}) if live.checkpoint.tuned else {}
    merged = {**{k: int(v) for k, v in tuned.items()}, **{k: int(v) for k, v in knobs.items() if v}}
    if live.index.spec.kind in RERANKED_KINDS:
        merged.setdefault("rerank", int(live.index.spec.params.get("rerank", 1)))
    return merged


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
                return _above(self.exact(allowed, query, k, live), min_score)
        settings = search_knobs(live, knobs)
        reranked = live.index.spec.kind in RERANKED_KINDS
        rerank = settings.pop("rerank", 1)
        if not reranked:
            rerank = 1  # a re-rank factor means nothing to an index that scores exactly
        with live.lock:
            scores, ids = live.index.search(query, k * rerank, allowed, **settings)
        if reranked and len(ids):
            hits = self.exact(ids, query, k, live)
        else:
            hits = [Hit(int(i), cosine(s)) for s, i in zip(scores[:k], ids[:k], strict=True)]
        if allowed is not None and len(hits) < min(k, len(allowed)):
            hits = self.exact(allowed, query, k, live)  # the approximate index under-filled a filtered query
        return _above(hits, min_score)

    def exact(self, candidate_ids: np.ndarray, query: np.ndarray, k: int, live: LiveIndex | None = None) -> list[Hit]:
        """The top k of the candidates by the exact cosine of their stored vectors."""
        return exact_top(self.sessions, candidate_ids, query, k, live.rerank if live is not None else None)


def _above(hits: list[Hit], min_score: float | None) -> list[Hit]:
    return [h for h in hits if min_score is None or h.score >= min_score]
