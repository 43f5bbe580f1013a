"""The vector store on real FAISS indexes and a real database, against a brute-force reference.

Every test that uses `db_url` (tests/conftest.py) runs twice: on a SQLite file and on a fresh
database of a real PostgreSQL server on loopback. Vectors here are synthetic (a test
double for the encoder is fine at this layer).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from index import query as query_module
from index.ann.vector_index import choose_spec
from index.db import create_db_engine, current_revision, head_revision, upgrade_database
from index.errors import (
    CollectionExistsError,
    InvalidFilterError,
    ModelMismatchError,
    ReadOnlyError,
    SchemaOutdatedError,
)
from index.filters import SearchFilter
from index.models import Base, schema_of
from index.store import VectorStore
from tests.support.store import DIM, MODEL, add, clustered, items, open_store


def brute_force(ids: list[int], vectors: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    scores = vectors @ query
    return [ids[i] for i in np.argsort(-scores, kind="stable")[:k]]


@pytest.fixture()
def store(tmp_path: Path, db_url: str) -> VectorStore:
    opened = open_store(tmp_path, db_url)
    yield opened
    opened.engine.dispose()


def test_migrations_create_exactly_the_models_schema(db_url: str) -> None:
    engine = create_db_engine(db_url)
    assert inspect(engine).get_table_names() == []
    upgrade_database(engine)
    assert current_revision(engine) == head_revision() == "0006"
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"include_object": schema_of(engine.dialect.name)})
        assert compare_metadata(context, Base.metadata) == []
    upgrade_database(engine)  # idempotent
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        else:
            types = dict(
                connection.exec_driver_sql(
                    "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'images'"
                ).all()
            )
            assert types["metadata"] == "jsonb"
    engine.dispose()


def test_flat_search_equals_brute_force(store: VectorStore) -> None:
    collection = store.create_collection("c", model=MODEL, dim=DIM)
    vectors = clustered(500)
    ids = add(store, collection.id, vectors)
    assert ids == sorted(ids) and len(set(ids)) == 500
    for query in clustered(5, seed=9):
        hits = store.search(collection.id, query, 10)
        assert [h.id for h in hits] == brute_force(ids, vectors, query, 10)
        np.testing.assert_allclose([h.score for h in hits], np.sort(vectors @ query)[::-1][:10], atol=1e-5)


def test_ids_are_database_ids_not_positions(store: VectorStore) -> None:
    first = store.create_collection("first", model=MODEL, dim=DIM)
    second = store.create_collection("second", model=MODEL, dim=DIM)
    a = add(store, first.id, clustered(20, seed=1))
    b = add(store, second.id, clustered(20, seed=2), start=100)
    assert set(a).isdisjoint(b)
    _, vector = store.vector(b[7])
    assert store.search(second.id, vector, 1)[0].id == b[7]
    assert all(h.id in a for h in store.search(first.id, vector, 5))


def test_same_content_is_one_image(store: VectorStore) -> None:
    collection = store.create_collection("c", model=MODEL, dim=DIM)
    batch = items(clustered(3))
    batch[2].sha256 = batch[0].sha256  # same bytes under another path
    results = store.add_images(collection.id, batch)
    assert results[2] == (results[0][0], False)
    assert store.collection("c").count == 2
    assert set(store.known_sources(collection.id, [b.uri for b in batch])) == {b.uri for b in batch}


def test_deleted_vectors_never_come_back(tmp_path: Path, db_url: str) -> None:
    store = open_store(tmp_path, db_url)
    collection = store.create_collection("c", model=MODEL, dim=DIM)
    vectors = clustered(300)
    ids = add(store, collection.id, vectors)
    store.checkpoint()
    gone = ids[::3]
    assert store.delete_images(gone) == len(gone)
    for query in vectors[:20]:
        assert not {h.id for h in store.search(collection.id, query, 50)} & set(gone)
    store.engine.dispose()
    reopened = open_store(tmp_path, db_url)  # the checkpoint predates the deletes: tombstones replay
    for query in vectors[:20]:
        assert not {h.id for h in reopened.search(collection.id, query, 50)} & set(gone)
    assert reopened.collection("c").count == 300 - len(gone)


@pytest.mark.parametrize("damage", ["missing", "corrupt", "truncated", "pointer"])
def test_missing_or_corrupt_index_is_rebuilt(tmp_path: Path, db_url: str, damage: str, caplog) -> None:
    store = open_store(tmp_path, db_url)
    collection = store.create_collection("c", model=MODEL, dim=DIM)
    vectors = clustered(200)
    ids = add(store, collection.id, vectors)
    store.checkpoint()
    store.engine.dispose()
    index_file = next((tmp_path / "indexes" / str(collection.id)).glob("index-*.faiss"))
    if damage == "missing":
        index_file.unlink()
    elif damage == "corrupt":
        index_file.write_bytes(b"\x00garbage" * 100)
    elif damage == "truncated":
        index_file.write_bytes(index_file.read_bytes()[: index_file.stat().st_size // 2])
    else:
        (index_file.parent / "CHECKPOINT.json").write_text("{not json")
    reopened = open_store(tmp_path, db_url)
    assert "Rebuilding the index" in caplog.text
    query = vectors[42]
    assert [h.id for h in reopened.search(collection.id, query, 10)] == brute_force(ids, vectors, query, 10)


def test_rows_after_the_checkpoint_are_replayed(tmp_path: Path, db_url: str) -> None:
    store = open_store(tmp_path, db_url)
    collection = store.create_collection("c", model=MODEL, dim=DIM)
    vectors = clustered(400)
    ids = add(store, collection.id, vectors[:200])
    store.checkpoint()
    ids += add(store, collection.id, vectors[200:], start=200)  # committed, never checkpointed
    store.engine.dispose()
    reopened = open_store(tmp_path, db_url)
    for query in vectors[195:205]:
        assert [h.id for h in reopened.search(collection.id, query, 10)] == brute_force(ids, vectors, query, 10)


def test_another_process_writes_are_picked_up_before_search(tmp_path: Path, db_url: str) -> None:
    reader = open_store(tmp_path, db_url)
    collection = reader.create_collection("c", model=MODEL, dim=DIM)
    writer = open_store(tmp_path, db_url)
    vectors = clustered(50)
    ids = add(writer, collection.id, vectors)
    assert reader.search(collection.id, vectors[3], 1)[0].id == ids[3]
    writer.delete_images([ids[3]])
    assert ids[3] not in {h.id for h in reader.search(collection.id, vectors[3], 5)}


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("hnsw", None),
        ("ivfpq", None),
        ("ivfpq", {"opq": True}),  # rotated before PQ, searched through the pre-transform
        ("ivfpq", {"coarse": "hnsw", "nlist": 128}),  # lists found by a graph over the centroids
    ],
)
def test_approximate_indexes_recall_at_10(tmp_path: Path, db_url: str, kind: str, params: dict | None) -> None:
    store = open_store(tmp_path, db_url)
    collection = store.create_collection("c", model=MODEL, dim=DIM)
    vectors = clustered(6000, seed=3)
    ids = add(store, collection.id, vectors)
    info = store.reindex("c", index_type=kind, index_params=params)
    assert info.live_index == kind
    assert {k: info.index_params[k] for k in params or {}} == (params or {})
    queries = clustered(50, seed=4)
    recall = np.mean(
        [
            len({h.id for h in store.search(collection.id, q, 10)} & set(brute_force(ids, vectors, q, 10))) / 10
            for q in queries
        ]
    )
    assert recall >= 0.95, recall
    gone = ids[:100]
    store.delete_images(gone)
    assert not {h.id for q in vectors[:100] for h in store.search(collection.id, q, 10)} & set(gone)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_filtered_search_fills_top_k(tmp_path: Path, db_url: str, kind: str, monkeypatch) -> None:
    monkeypatch.setattr(query_module, "EXACT_FILTER_LIMIT", 0)  # force the FAISS selector path
    store = open_store(tmp_path, db_url)
    collection = store.create_collection("c", model=MODEL, dim=DIM)
    vectors = clustered(3000, seed=5)
    ids = add(store, collection.id, vectors, meta=lambda i: {"label": "rare" if i % 50 == 0 else "common", "n": i})
    store.reindex("c", index_type=kind)
    rare = [image_id for i, image_id in enumerate(ids) if i % 50 == 0]
    hits = store.search(collection.id, vectors[1], 10, SearchFilter(metadata={"label": "rare"}))
    assert len(hits) == 10 and {h.id for h in hits} <= set(rare)
    expected = brute_force(rare, vectors[::50], vectors[1], 10)
    if kind == "flat":
        assert [h.id for h in hits] == expected


def test_filters(store: VectorStore) -> None:
    collection = store.create_collection("c", model=MODEL, dim=DIM)
    vectors = clustered(40, seed=6)
    ids = add(
        store,
        collection.id,
        vectors,
        meta=lambda i: {"label": ["cat", "dog", "car", "dog"][i % 4], "n": i, "ok": i % 2 == 0},
    )

    def matching(search_filter: SearchFilter) -> set[int]:
        return {h.id for h in store.search(collection.id, vectors[0], 40, search_filter)}

    assert matching(SearchFilter(metadata={"label": "cat"})) == {ids[i] for i in range(0, 40, 4)}
    assert matching(SearchFilter(metadata={"label": ["cat", "car"]})) == {ids[i] for i in range(40) if i % 2 == 0}
    assert matching(SearchFilter(metadata={"n": 7})) == {ids[7]}
    assert matching(SearchFilter(metadata={"ok": False, "label": "dog"})) == {ids[i] for i in range(1, 40, 2)}
    assert matching(SearchFilter(uri_prefix="/photos/1")) == {ids[1]} | {ids[i] for i in range(10, 20)}
    assert matching(SearchFilter(metadata={"label": "zebra"})) == set()
    hits = store.search(collection.id, vectors[0], 40, min_score=0.5)
    assert hits and all(h.score >= 0.5 for h in hits)


def test_metadata_filters_compare_typed_values(store: VectorStore) -> None:
    collection = store.create_collection("c", model=MODEL, dim=DIM)
    metas = [
        {"n": 7},
        {"n": 7.0},
        {"n": "abc"},
        {"n": [7]},
        {"n": False},
        {"n": {"deep": 7}},
        {},
        {"s": "7 cats"},
        {"n": "7"},
        {"n": True},
        {"n": 1},
        {"n": 0},
    ]
    ids = add(store, collection.id, clustered(len(metas), seed=8), meta=lambda i: metas[i])

    def matching(**metadata) -> set[int]:
        return {h.id for h in store.search(collection.id, clustered(1, seed=9)[0], 20, SearchFilter(metadata=metadata))}

    # One key holding numbers, a string, a list, a boolean and an object: no row makes the query fail.
    assert matching(n=7) == {ids[0], ids[1]}
    assert matching(n=7.0) == {ids[0], ids[1]}
    assert matching(n="abc") == {ids[2]}
    assert matching(n=False) == {ids[4]}
    assert matching(n=[7, "abc"]) == {ids[0], ids[1], ids[2]}
    assert matching(s="7 cats") == {ids[7]}
    # Strings never equal numbers, and booleans never equal 1 or 0 (SQLite stores true as 1).
    assert matching(n="7") == {ids[8]}
    assert matching(n=True) == {ids[9]}
    assert matching(n=1) == {ids[10]}
    assert matching(n=0) == {ids[11]}
    assert matching(n=[True, "7"]) == {ids[8], ids[9]}
    assert matching(missing="x") == set()
    with pytest.raises(InvalidFilterError, match="finite"):
        matching(n=float("nan"))


def test_metadata_patch_merges_and_loses_no_concurrent_update(store: VectorStore) -> None:
    collection = store.create_collection("c", model=MODEL, dim=DIM)
    [image_id] = add(
        store, collection.id, clustered(1), meta=lambda i: {"label": "cat", "box": {"x": 1, "y": 2}, "n": 1}
    )
    image = store.patch_metadata(image_id, {"label": None, "box": {"y": None, "z": 3}, "tags": ["a"]})
    assert image.meta == {"box": {"x": 1, "z": 3}, "n": 1, "tags": ["a"]}

    def patch(worker: int) -> None:
        for round_ in range(5):
            store.patch_metadata(image_id, {f"w{worker}-{round_}": round_})

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(patch, range(6)))
    meta = store.image(image_id).meta
    assert {k for k in meta if k.startswith("w")} == {f"w{w}-{r}" for w in range(6) for r in range(5)}
    assert meta["box"] == {"x": 1, "z": 3}


def test_read_only_store_serves_new_rows_but_never_writes(tmp_path: Path, db_url: str) -> None:
    def reader() -> VectorStore:
        return VectorStore(engine=create_db_engine(db_url), index_dir=tmp_path / "indexes", read_only=True)

    with pytest.raises(SchemaOutdatedError, match="pe-search db upgrade"):
        reader().open()  # an empty database: a reader does not migrate it
    writer = open_store(tmp_path, db_url)
    collection = writer.create_collection("c", model=MODEL, dim=DIM)
    ids = add(writer, collection.id, clustered(30))
    writer.checkpoint()
    index_dir = tmp_path / "indexes" / str(collection.id)
    files_before = {p.name: p.read_bytes() for p in index_dir.iterdir()}
    follower = reader().open()
    vectors = clustered(10, seed=3)
    more = add(writer, collection.id, vectors, start=30)
    assert follower.search(collection.id, vectors[4], 1)[0].id == more[4]
    writer.delete_images([more[4]])
    assert more[4] not in {h.id for h in follower.search(collection.id, vectors[4], 5)}
    refused = [
        lambda: follower.add_images(collection.id, items(clustered(1, seed=4), start=99)),
        lambda: follower.delete_images(ids[:1]),
        lambda: follower.patch_metadata(ids[0], {"a": 1}),
        lambda: follower.create_collection("d", model=MODEL, dim=DIM),
        lambda: follower.delete_collection("c"),
        lambda: follower.reindex("c"),
    ]
    for attempt in refused:
        with pytest.raises(ReadOnlyError, match="PE_SEARCH_READ_ONLY"):
            attempt()
    follower.close()  # a writer would checkpoint here
    assert {p.name: p.read_bytes() for p in index_dir.iterdir()} == files_before
    assert writer.collection("c").count == 39 and writer.image(ids[0]).meta == {}
    writer.engine.dispose()


def test_collections_record_model_and_refuse_another(store: VectorStore) -> None:
    info = store.ensure_collection("photos", model=MODEL, dim=DIM)
    assert (info.model, info.dim, info.count, info.index_type) == (MODEL, DIM, 0, "auto")
    assert store.ensure_collection("photos", model=MODEL, dim=DIM).id == info.id
    with pytest.raises(ModelMismatchError, match="PE-Core-B16-224"):
        store.ensure_collection("photos", model="PE-Core-B16-224", dim=1024)
    with pytest.raises(CollectionExistsError):
        store.create_collection("photos", model=MODEL, dim=DIM)
    store.delete_collection("photos")
    assert store.collections() == []


def test_auto_index_choice_follows_size_and_memory_budget() -> None:
    budget = 8 * 1024**3
    assert choose_spec("auto", 50_000, 1024, budget).kind == "flat"
    assert choose_spec("auto", 1_000_000, 1024, budget).kind == "hnsw"  # ~4.4 GB fits
    assert choose_spec("auto", 10_000_000, 1024, budget).kind == "ivfpq"
    assert choose_spec("ivfpq", 100, 1024, budget).kind == "flat"  # too few to train
    ivfpq = choose_spec("ivfpq", 1_000_000, 1024, budget)
    assert ivfpq.params["m"] == 64 and ivfpq.params["nlist"] == 4000
    with pytest.raises(ValueError, match="unknown index type"):
        choose_spec("lsh", 10, 1024, budget)
