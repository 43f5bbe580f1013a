"""Auto-tuning after a build: exact neighbours against brute force, the choice rule, and a store that
tunes HNSW and IVF-PQ on its own vectors, keeps the choice across a restart, and lets a query override it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from index.db import create_db_engine
from index.models import Collection
from index.query import search_knobs
from index.store import VectorStore
from index.tuning import HeldOut, Trial, TuningGoal, choose
from tests.support.store import DIM, MODEL, add, clustered

GOAL = TuningGoal(target_recall=0.95, latency_budget_ms=50.0, queries=60)


def test_held_out_rows_stay_out_of_the_build_and_get_exact_neighbours() -> None:
    vectors = clustered(700, seed=21)
    ids = np.arange(10, 710, dtype=np.int64)
    picks = np.array([3, 50, 699])
    chunks = [(ids[s : s + 128], vectors[s : s + 128]) for s in range(0, 700, 128)]
    held = HeldOut(ids[picks], vectors[picks], 5)
    indexed = sum(len(chunk_ids) for chunk_ids, _ in held.split(chunks))
    assert indexed == 700 - len(picks)  # the build never sees the held-out rows
    got = held.truth
    for row, pick in zip(got, picks, strict=True):
        scores = vectors @ vectors[pick]
        scores[pick] = -np.inf
        assert set(row.tolist()) == set(ids[np.argsort(-scores)[:5]].tolist())


def test_choice_is_the_fastest_setting_that_meets_the_target_within_the_budget() -> None:
    goal = TuningGoal(target_recall=0.9, latency_budget_ms=2.0)
    slow_good, fast_good, fast_bad = (
        Trial({"e": 3}, 0.99, 1.9, 3),
        Trial({"e": 2}, 0.92, 1.0, 2),
        Trial({"e": 1}, 0.5, 0.2, 1),
    )
    assert choose([fast_bad, fast_good, slow_good], goal) == (fast_good, True)
    # Nothing reaches the target within the budget: the best recall that fits.
    assert choose([fast_bad, Trial({"e": 4}, 0.99, 9.0, 9)], goal) == (fast_bad, False)
    # Nothing fits the budget: the fastest that reaches the target.
    over = [Trial({"e": 5}, 0.95, 7.0, 8), Trial({"e": 6}, 0.97, 5.0, 6)]
    assert choose(over, goal) == (over[1], False)


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_a_build_tunes_itself_and_keeps_the_choice_across_a_restart(tmp_path: Path, db_url: str, kind: str) -> None:
    store = VectorStore(engine=create_db_engine(db_url), index_dir=tmp_path / "indexes", tuning=GOAL).open()
    cid = store.create_collection("c", model=MODEL, dim=DIM, index_type=kind).id
    everything = clustered(4_040, seed=22)
    vectors, queries = everything[:4_000], everything[4_000:]  # held-out queries of the same mixture
    ids = add(store, cid, vectors)
    info = store.reindex("c")
    tuned = info.tuned
    assert tuned["met"] is True and tuned["recall"] >= 0.95 and tuned["queries"] == 60
    assert info.indexed == 4_000  # the held-out queries joined the index after tuning
    knob = "ef_search" if kind == "hnsw" else "nprobe"
    assert knob in tuned["params"] and (kind == "hnsw" or "rerank" in tuned["params"])
    with store.sessions() as session:
        assert session.scalar(select(Collection.tuned_params).where(Collection.id == cid))["params"] == tuned["params"]
    # What it measured holds for fresh queries of the same collection: recall at the chosen setting.
    found = [[h.id for h in store.search(cid, q, 10)] for q in queries]
    truth = [[ids[i] for i in np.argsort(-(vectors @ q))[:10]] for q in queries]
    assert np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]) >= 0.9
    store.engine.dispose()

    reopened = VectorStore(engine=create_db_engine(db_url), index_dir=tmp_path / "indexes", tuning=GOAL).open()
    assert reopened.collection("c").tuned["params"] == tuned["params"]  # from the checkpoint: no re-tuning
    live = reopened.live.synced(cid)
    assert search_knobs(live, {})[knob] == tuned["params"][knob]
    assert search_knobs(live, {knob: 7})[knob] == 7  # a query's own knob wins


def test_small_and_flat_collections_are_not_tuned(tmp_path: Path) -> None:
    store = VectorStore(
        engine=create_db_engine(f"sqlite:///{tmp_path / 'meta.db'}"), index_dir=tmp_path / "indexes", tuning=GOAL
    ).open()
    flat = store.create_collection("flat", model=MODEL, dim=DIM, index_type="flat").id
    add(store, flat, clustered(2_000, seed=24))
    assert store.reindex("flat").tuned == {}
    small = store.create_collection("small", model=MODEL, dim=DIM, index_type="hnsw").id
    add(store, small, clustered(300, seed=25), start=5_000)
    assert store.reindex("small").tuned == {}
