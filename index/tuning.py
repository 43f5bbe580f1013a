"""Auto-tuning after a build: the cheapest search setting that reaches a target recall on the
collection's own vectors, within a latency budget.

Queries are stored vectors drawn at random before the build and held out of it: the build adds
every other row, the ground truth is scored exactly against those rows as the build streams them
(no second pass over the database), the settings ladder is measured, and only then are the
held-out rows added. Queries left in the index would flatter it (an HNSW graph links a stored
vector to its own neighbours). Times are single queries on one thread, through the path a
search takes (index search, then the exact re-rank for compressed kinds). The choice is stored
with the collection and the checkpoint; a query's own knobs still override it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from index import vector_rows
from index.ann.vector_index import RERANKED_KINDS
from index.exact import exact_top

if TYPE_CHECKING:
    from index.live import LiveIndex

log = logging.getLogger(__name__)
HNSW_EF = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
IVF_NPROBE = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
IVF_RERANK = (2, 4, 10, 25, 50)


@dataclass(frozen=True)
class TuningGoal:
    target_recall: float = 0.95
    latency_budget_ms: float = 5.0
    queries: int = 200
    k: int = 10
    # Below this many vectors the defaults are measured but nothing is tuned: too few to sample.
    min_vectors: int = 1_000


@dataclass(frozen=True)
class Trial:
    params: dict[str, int]
    recall: float
    p50_ms: float
    p99_ms: float

    def as_json(self) -> dict[str, Any]:
        return {"params": self.params, "recall": round(self.recall, 4), "p50_ms": self.p50_ms, "p99_ms": self.p99_ms}


class HeldOut:
    """Query rows kept out of a build, and their exact neighbours among the rows it adds."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, k: int) -> None:
        self.ids, self.vectors, self.k = ids, vectors, k
        self._best_ids = np.full((len(ids), k), -1, np.int64)
        self._best_scores = np.full((len(ids), k), -np.inf, np.float32)

    def update(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Fold one chunk of indexed rows into each query's exact top k."""
        if not len(ids):
            return
        scores = self.vectors @ vectors.T  # queries x chunk
        all_scores = np.concatenate([self._best_scores, scores], axis=1)
        all_ids = np.concatenate([self._best_ids, np.broadcast_to(ids, scores.shape)], axis=1)
        top = np.argpartition(-all_scores, self.k - 1, axis=1)[:, : self.k]
        self._best_scores = np.take_along_axis(all_scores, top, axis=1)
        self._best_ids = np.take_along_axis(all_ids, top, axis=1)

    @property
    def truth(self) -> np.ndarray:
        """Per query, the ids of its k most similar indexed rows (-1 pads fewer)."""
        return self._best_ids

    def split(self, chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The chunks without the held-out rows, each folded into the ground truth as it passes."""
        for ids, vectors in chunks:
            keep = ~np.isin(ids, self.ids)
            ids, vectors = ids[keep], vectors[keep]
            self.update(ids, vectors)
            yield ids, vectors


def hold_out(session: Session, *, collection_id: int, n: int, kind: str, goal: TuningGoal) -> HeldOut | None:
    """Queries to keep out of a build of n rows of this kind; None where nothing is tuned."""
    if kind not in ("hnsw", *RERANKED_KINDS) or n < goal.min_vectors:
        return None
    ids, vectors = vector_rows.random_rows(session, collection_id=collection_id, rows=min(goal.queries, n // 10))
    return HeldOut(ids, vectors, goal.k) if len(ids) else None


def _recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    hits = [
        len(set(f.tolist()) & set(t[t >= 0].tolist())) / max(1, int((t >= 0).sum()))
        for f, t in zip(found, truth, strict=True)
    ]
    return float(np.mean(hits)) if hits else 0.0


def trial(
    sessions: sessionmaker[Session],
    live: LiveIndex,
    queries: np.ndarray,
    truth: np.ndarray,
    params: dict[str, int],
    k: int,
) -> Trial:
    """One setting's recall@k and single-query times over the held-out queries."""
    knobs = dict(params)
    rerank = knobs.pop("rerank", 1)
    reranked = live.index.spec.kind in RERANKED_KINDS
    found, ms = [], []
    for q in queries:  # held out of the index: no query can find itself
        started = time.perf_counter()
        with live.lock:
            _, ids = live.index.search(q, k * rerank, None, **knobs)
        if reranked and len(ids):
            ids = np.array([h.id for h in exact_top(sessions, ids, q, k, live.rerank)], dtype=np.int64)
        ms.append((time.perf_counter() - started) * 1000)
        found.append(ids[:k])
    p50, p99 = (round(float(np.percentile(ms, q)), 3) for q in (50, 99))
    return Trial(params, _recall(found, truth), p50, p99)


def candidates(live: LiveIndex) -> Iterator[list[dict[str, int]]]:
    """Settings in increasing cost: one ladder per re-rank factor (one ladder for HNSW)."""
    spec = live.index.spec
    if spec.kind == "hnsw":
        yield [{"ef_search": ef} for ef in HNSW_EF]
    elif spec.kind in RERANKED_KINDS:
        nlist = int(spec.params.get("nlist", 1))
        for rerank in IVF_RERANK:
            yield [{"nprobe": p, "rerank": rerank} for p in IVF_NPROBE if p <= nlist]


def choose(trials: list[Trial], goal: TuningGoal) -> tuple[Trial, bool]:
    """The fastest trial that reaches the target within the budget; else the best recall within the
    budget; else (nothing fits the budget) the fastest that reaches the target, or the best recall."""
    fits = [t for t in trials if t.p50_ms <= goal.latency_budget_ms]
    met = [t for t in fits if t.recall >= goal.target_recall]
    if met:
        return min(met, key=lambda t: t.p50_ms), True
    if fits:
        return max(fits, key=lambda t: (t.recall, -t.p50_ms)), False
    reach = [t for t in trials if t.recall >= goal.target_recall]
    if reach:
        return min(reach, key=lambda t: t.p50_ms), False
    return max(trials, key=lambda t: (t.recall, -t.p50_ms)), False


def tune_index(sessions: sessionmaker[Session], live: LiveIndex, held: HeldOut, goal: TuningGoal) -> dict[str, Any]:
    """Measure the settings ladder with the held-out queries; the chosen setting and its figures."""
    started = time.perf_counter()
    trials: list[Trial] = []
    for ladder in candidates(live):
        for params in ladder:
            result = trial(sessions, live, held.vectors, held.truth, params, goal.k)
            trials.append(result)
            # Costlier rungs only help while the target is unmet and the budget holds.
            if result.recall >= goal.target_recall or result.p50_ms > goal.latency_budget_ms:
                break
    best, met = choose(trials, goal)
    seconds = round(time.perf_counter() - started, 1)
    log.info(
        "Tuned the %s index: %s gives recall@%d %.3f at p50 %.2f ms (target %.2f within %.1f ms: %s), in %.1f s",
        live.index.spec.kind, best.params, goal.k, best.recall, best.p50_ms,
        goal.target_recall, goal.latency_budget_ms, "met" if met else "missed", seconds,
    )  # fmt: skip
    return {
        **best.as_json(),
        "target_recall": goal.target_recall,
        "latency_budget_ms": goal.latency_budget_ms,
        "met": met,
        "queries": int(len(held.ids)),
        "k": goal.k,
        "trials": len(trials),
        "seconds": seconds,
        "tuned_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
