"""IVF-PQ re-ranking from memory-mapped vector segments beside the checkpoint, against re-ranking
from the database (the reference), on a real database and real FAISS indexes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from index import exact as exact_module
from index import vector_rows
from index.ann import checkpoint as ckpt
from index.ann.vector_file import MAX_SEGMENTS
from index.db import create_db_engine
from index.store import VectorStore
from tests.support.store import DIM, MODEL, add, clustered

N = 3_000


def _store(root: Path, url: str, dtype: str | None = "float32") -> VectorStore:
    return VectorStore(engine=create_db_engine(url), index_dir=root / "indexes", rerank_dtype=dtype).open()


@pytest.fixture()
def db_reads(monkeypatch) -> list[int]:
    """How many vectors each database read of the re-rank fetched."""
    calls: list[int] = []
    real = vector_rows.vectors_for

    def counting(session, *, image_ids):
        calls.append(len(image_ids))
        return real(session, image_ids=image_ids)

    monkeypatch.setattr(exact_module.vector_rows, "vectors_for", counting)
    return calls


def _ivfpq(tmp_path: Path, db_url: str, dtype: str | None = "float32") -> tuple[VectorStore, int, np.ndarray, list]:
    store = _store(tmp_path, db_url, dtype)
    collection = store.create_collection("c", model=MODEL, dim=DIM, index_type="ivfpq")
    vectors = clustered(N, seed=11)
    ids = add(store, collection.id, vectors)
    store.reindex("c")
    return store, collection.id, vectors, ids


def _pointer(tmp_path: Path, collection_id: int) -> dict:
    return json.loads((tmp_path / "indexes" / str(collection_id) / ckpt.POINTER).read_text())


def test_reranked_answers_match_the_database_and_read_no_vectors_from_it(tmp_path: Path, db_url: str, db_reads) -> None:
    store, cid, vectors, ids = _ivfpq(tmp_path, db_url)
    segments = _pointer(tmp_path, cid)["segments"]
    assert [s["rows"] for s in segments] == [N] and segments[0]["dtype"] == "float32"
    queries = clustered(20, seed=12)
    db_reads.clear()
    mapped = [[(h.id, h.score) for h in store.search(cid, q, 10)] for q in queries]
    assert db_reads == []  # every candidate came from the mapped file
    store.engine.dispose()

    reference = _store(tmp_path / "ref", db_url, None)  # same database, re-rank from SQL
    ref_id = reference.collection("c").id
    reference.reindex("c")
    expected = [[(h.id, h.score) for h in reference.search(ref_id, q, 10)] for q in queries]
    assert db_reads  # the reference did read the database
    for got, want in zip(mapped, expected, strict=True):
        assert [i for i, _ in got] == [i for i, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-6)
        # The scores are exact cosines of the stored vectors.
    top = mapped[0][0]
    np.testing.assert_allclose(top[1], float(vectors[ids.index(top[0])] @ queries[0]), atol=1e-5)


def test_rows_added_after_the_checkpoint_are_reranked_then_written_as_segments(
    tmp_path: Path, db_url: str, db_reads
) -> None:
    store, cid, vectors, ids = _ivfpq(tmp_path, db_url)
    for round_ in range(MAX_SEGMENTS + 1):
        fresh = clustered(20, seed=100 + round_)
        new_ids = add(store, cid, fresh, start=N + 20 * round_)
        db_reads.clear()
        hits = store.search(cid, fresh[0], 5)
        assert hits[0].id == new_ids[0] and hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert db_reads == []  # served from the rows kept since the checkpoint
        assert store.checkpoint("c")
    segments = _pointer(tmp_path, cid)["segments"]
    # One build segment plus checkpoint segments, merged once there were more than MAX_SEGMENTS.
    assert len(segments) <= MAX_SEGMENTS and segments[0]["rows"] == N
    assert sum(s["rows"] for s in segments) == N + 20 * (MAX_SEGMENTS + 1)
    files = {p.name for p in (tmp_path / "indexes" / str(cid)).glob("vectors-*")}
    assert files == {f"{s['stem']}.ids.npy" for s in segments} | {f"{s['stem']}.float32" for s in segments}
    store.engine.dispose()
    reopened = _store(tmp_path, db_url)
    db_reads.clear()
    last = clustered(20, seed=100 + MAX_SEGMENTS)
    assert reopened.search(cid, last[0], 1)[0].score == pytest.approx(1.0, abs=1e-5)
    assert db_reads == []


def test_a_damaged_segment_is_rewritten_by_the_writer_and_read_around_by_a_reader(
    tmp_path: Path, db_url: str, db_reads, caplog
) -> None:
    store, cid, vectors, ids = _ivfpq(tmp_path, db_url)
    query = clustered(1, seed=13)[0]
    before = [h.id for h in store.search(cid, query, 10)]
    store.engine.dispose()
    directory = tmp_path / "indexes" / str(cid)
    for path in directory.glob("vectors-*.float32"):
        path.write_bytes(b"torn")
    reader = VectorStore(engine=create_db_engine(db_url), index_dir=tmp_path / "indexes", read_only=True).open()
    assert "Re-rank vectors" in caplog.text
    db_reads.clear()
    assert [h.id for h in reader.search(cid, query, 10)] == before
    assert db_reads  # the reader cannot rewrite the file: it re-ranks from the database
    reader.engine.dispose()
    writer = _store(tmp_path, db_url)  # the writer rewrites it from the database
    db_reads.clear()
    assert [h.id for h in writer.search(cid, query, 10)] == before and db_reads == []
    assert all(p.stat().st_size == N * DIM * 4 for p in directory.glob("vectors-*.float32"))


def test_float16_segments_halve_the_file_and_keep_scores_within_1e_3(tmp_path: Path, db_url: str) -> None:
    store, cid, vectors, ids = _ivfpq(tmp_path, db_url, "float16")
    segment = _pointer(tmp_path, cid)["segments"][0]
    path = tmp_path / "indexes" / str(cid) / f"{segment['stem']}.float16"
    assert path.stat().st_size == N * DIM * 2
    for q in clustered(10, seed=14):
        for hit in store.search(cid, q, 10):
            assert abs(hit.score - float(vectors[ids.index(hit.id)] @ q)) < 1e-3


def test_flat_and_hnsw_write_no_segments(tmp_path: Path) -> None:
    store = _store(tmp_path, f"sqlite:///{tmp_path / 'meta.db'}")
    cid = store.create_collection("c", model=MODEL, dim=DIM, index_type="hnsw").id
    add(store, cid, clustered(500, seed=15))
    store.checkpoint("c")
    assert _pointer(tmp_path, cid)["segments"] == []
    assert not list((tmp_path / "indexes" / str(cid)).glob("vectors-*"))


def test_a_checkpoint_from_before_rerank_files_gets_its_segment_at_load(tmp_path: Path, db_url: str, db_reads) -> None:
    store, cid, vectors, ids = _ivfpq(tmp_path, db_url, None)  # built and saved without re-rank vectors
    assert _pointer(tmp_path, cid)["segments"] == []
    store.engine.dispose()
    reopened = _store(tmp_path, db_url)  # the writer maps the old checkpoint and writes what it lacks
    db_reads.clear()
    hits = reopened.search(cid, vectors[5], 3)
    assert hits[0].id == ids[5] and db_reads == []
    assert reopened.checkpoint("c")
    assert [s["rows"] for s in _pointer(tmp_path, cid)["segments"]] == [N]
