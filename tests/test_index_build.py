"""Index builds at scale: IVF-PQ trained on a budgeted sample and filled in chunks; memory-mapped checkpoints.

Unit tests of the index layer on synthetic clustered vectors (no model involved).
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from index import crud
from index.ann import checkpoint as ckpt
from index.ann.build import TRAIN_COPIES, BuildPlan, build_index, index_bytes, plan_build, sample_bounds
from index.ann.vector_index import IndexSpec, VectorIndex, choose_spec
from index.db import create_db_engine
from index.store import VectorStore
from index.vector_rows import training_sample

DIM = 64
N = 6_000
K = 10


def _clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).standard_normal((40, DIM)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.4 * rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vectors, queries = _clustered(N, 1), _clustered(50, 2)
    _, truth = faiss.knn(queries, vectors, K, metric=faiss.METRIC_INNER_PRODUCT)
    return vectors, queries, truth + 1


def _chunks(vectors: np.ndarray, rows: int):
    for start in range(0, len(vectors), rows):
        part = vectors[start : start + rows]
        yield np.arange(start + 1, start + 1 + len(part), dtype=np.int64), part


def _recall(index: VectorIndex, queries: np.ndarray, truth: np.ndarray) -> float:
    hits = [set(index.search(q, K, nprobe=16)[1].tolist()) for q in queries]
    return float(np.mean([len(h & set(t.tolist())) / K for h, t in zip(hits, truth)]))


@pytest.mark.slow  # an IVF-PQ build of 6,000 vectors, twice
def test_chunked_build_answers_exactly_like_a_one_pass_build(data) -> None:
    vectors, queries, truth = data
    spec = choose_spec("ivfpq", N, DIM, 1 << 30)
    plan = plan_build(spec, N, DIM, 1 << 30)
    sample = vectors[np.random.default_rng(5).choice(N, plan.sample_rows, replace=False)]
    one_pass = VectorIndex.build(spec, DIM, sample)
    one_pass.add(np.arange(1, N + 1), vectors)
    chunked = build_index(
        spec,
        DIM,
        plan=BuildPlan(plan.sample_rows, 700, 0, 0, True),
        chunks=_chunks(vectors, 700),
        sample=lambda rows: sample[:rows],
    )
    assert chunked.count == one_pass.count == N
    for q in queries:
        assert chunked.search(q, K, nprobe=16)[1].tolist() == one_pass.search(q, K, nprobe=16)[1].tolist()
    assert _recall(chunked, queries, truth) == _recall(one_pass, queries, truth) > 0.3  # vs ~0.002 by chance


def test_training_takes_only_the_planned_sample(data) -> None:
    vectors, _, _ = data
    spec = choose_spec("ivfpq", N, DIM, 1 << 30)
    asked: list[int] = []
    seen: list[int] = []

    def sample(rows: int) -> np.ndarray:
        asked.append(rows)
        return vectors  # more than asked: the build must still train on `rows` only

    def counting_chunks():
        for ids, part in _chunks(vectors, 1000):
            seen.append(len(part))
            yield ids, part

    small = BuildPlan(
        sample_rows=sample_bounds(spec)[0], chunk_rows=1000, index_bytes=0, peak_bytes=0, within_budget=True
    )
    original = faiss.IndexIVFPQ.train
    trained_on: list[int] = []

    def spy(self, x):  # noqa: ANN001 - FAISS signature
        trained_on.append(len(x))
        return original(self, x)

    faiss.IndexIVFPQ.train = spy
    try:
        index = build_index(spec, DIM, plan=small, chunks=counting_chunks(), sample=sample)
    finally:
        faiss.IndexIVFPQ.train = original
    assert asked == [small.sample_rows]
    assert trained_on == [small.sample_rows] and small.sample_rows < N
    assert max(seen) <= 1000 and sum(seen) == index.count == N


def test_ivfpq_needs_a_sample() -> None:
    spec = choose_spec("ivfpq", N, DIM, 1 << 30)
    with pytest.raises(ValueError, match="training sample"):
        build_index(spec, DIM, plan=plan_build(spec, N, DIM, 1 << 30), chunks=iter(()))


def test_plan_for_ten_million_vectors_fits_the_default_budget() -> None:
    n, dim, budget = 10_000_000, 1024, 8 * 1024**3
    spec = choose_spec("auto", n, dim, budget)
    assert spec.kind == "ivfpq" and spec.params["m"] == 64 and spec.params["nbits"] == 8
    plan = plan_build(spec, n, dim, budget)
    # 64-byte codes + 8-byte ids per vector, plus coarse and PQ centroids.
    assert plan.index_bytes == n * 72 + spec.params["nlist"] * dim * 4 + 256 * dim * 4
    fewest, most = sample_bounds(spec)
    assert plan.sample_rows == most == spec.params["nlist"] * 64
    assert plan.peak_bytes == plan.index_bytes + plan.sample_rows * TRAIN_COPIES * dim * 4 + plan.chunk_rows * dim * 4
    assert plan.within_budget and plan.peak_bytes <= budget


def test_a_tighter_budget_shrinks_the_sample_but_not_below_the_useful_floor() -> None:
    n, dim = 10_000_000, 1024
    spec = choose_spec("ivfpq", n, dim, 8 * 1024**3)
    fewest, most = sample_bounds(spec)
    roomy = plan_build(spec, n, dim, 8 * 1024**3)
    tight = plan_build(spec, n, dim, 5 * 1024**3)
    starved = plan_build(spec, n, dim, 1 * 1024**3)
    assert fewest < tight.sample_rows < roomy.sample_rows == most
    assert tight.within_budget and tight.peak_bytes <= 5 * 1024**3
    assert starved.sample_rows == fewest and not starved.within_budget
    assert tight.chunk_rows * dim * 4 <= 5 * 1024**3 // 16


def test_index_bytes_by_kind() -> None:
    assert index_bytes(IndexSpec("flat"), 1000, 1024) == 1000 * (4096 + 8)
    hnsw = choose_spec("hnsw", 1000, 1024, 1 << 40)
    assert 4096 + 8 < index_bytes(hnsw, 1000, 1024) / 1000 < 4096 + 8 + 400


def _store(tmp_path: Path) -> VectorStore:
    return VectorStore(
        engine=create_db_engine(f"sqlite:///{tmp_path / 'meta.db'}"), index_dir=tmp_path / "indexes"
    ).open()


def _items(vectors: np.ndarray, tag: str) -> list[crud.NewImage]:
    return [
        crud.NewImage(
            sha256=f"{tag}{i:060x}", uri=f"/{tag}/{i}.jpg", width=1, height=1, format="JPEG", byte_size=1, vector=v
        )
        for i, v in enumerate(vectors)
    ]


def test_training_sample_reads_random_rows_of_one_collection(tmp_path: Path) -> None:
    store = _store(tmp_path)
    a = store.create_collection("a", model="m", dim=DIM, index_type="flat").id
    b = store.create_collection("b", model="m", dim=DIM, index_type="flat").id
    va, vb = _clustered(500, 3), _clustered(300, 4)
    store.add_images(a, _items(va, "a"))
    store.add_images(b, _items(vb, "b"))
    with store.sessions() as session:
        sample = training_sample(session, collection_id=a, rows=120, batch=50)
        everything = training_sample(session, collection_id=a, rows=10_000)
    known = {v.tobytes() for v in va}
    assert sample.shape == (120, DIM) and all(row.tobytes() in known for row in sample)
    assert len({row.tobytes() for row in sample}) == 120
    assert not np.array_equal(sample, va[:120])  # random, not the first rows by id
    assert everything.shape == (500, DIM)
    store.close()


def test_store_rebuild_of_ivfpq_streams_and_finds_stored_images(tmp_path: Path) -> None:
    store = _store(tmp_path)
    vectors = _clustered(3000, 6)
    cid = store.create_collection("big", model="m", dim=DIM, index_type="ivfpq").id
    store.add_images(cid, _items(vectors, "x"))
    store.reindex("big")
    info = store.collection("big")
    assert info.live_index == "ivfpq" and info.indexed == 3000
    hits = store.search(cid, vectors[123], 5)
    assert hits[0].id == store.existing_shas(cid, [f"x{123:060x}"])[f"x{123:060x}"]
    store.close()


# --- memory-mapped checkpoints ---


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_mapped_checkpoint_answers_like_a_loaded_one_and_copies_itself_on_write(
    tmp_path: Path, data, kind: str
) -> None:
    vectors, queries, _ = data
    spec = choose_spec(kind, N, DIM, 1 << 30)
    index = VectorIndex.build(spec, DIM, vectors[:3000] if kind == "ivfpq" else None)
    index.add(np.arange(1, N + 1), vectors)
    ckpt.save(tmp_path, index, ckpt.Checkpoint(id_watermark=N, model="m"))
    mapped, _ = ckpt.load(tmp_path, mmap=True)
    plain, _ = ckpt.load(tmp_path, mmap=False)
    assert mapped.is_mapped and not plain.is_mapped
    for q in queries[:10]:
        assert mapped.search(q, K)[1].tolist() == plain.search(q, K)[1].tolist()
    # A newer checkpoint replaces (unlinks) the mapped file before the first write.
    (tmp_path / ckpt.read_pointer(tmp_path).file).unlink()
    extra = _clustered(5, 9)
    mapped.add(np.arange(N + 1, N + 6), extra)  # would abort the process if written to the mapping
    mapped.remove(np.array([1, 2, 3]))
    assert not mapped.is_mapped
    assert mapped.count == N + 5 - 3
    assert mapped.search(extra[0], 1)[1].tolist() == [N + 1]
    assert 1 not in mapped.search(vectors[0], K)[1].tolist()


def test_store_reopens_mapped_and_replays_rows_added_since(tmp_path: Path) -> None:
    store = _store(tmp_path)
    first, later = _clustered(400, 10), _clustered(50, 11)
    cid = store.create_collection("c", model="m", dim=DIM, index_type="hnsw").id
    store.add_images(cid, _items(first, "f"))
    store.close()
    writer = _store(tmp_path)  # a second process's view: adds rows after the checkpoint
    reader = _store(tmp_path)
    assert reader.live.get(cid).index.is_mapped
    writer.add_images(cid, _items(later, "l"))
    hits = reader.search(cid, later[7], 1)
    assert hits[0].id == reader.existing_shas(cid, [f"l{7:060x}"])[f"l{7:060x}"]
    assert reader.collection("c").indexed == 450 and not reader.live.get(cid).index.is_mapped
    writer.close()
    reader.close()


@pytest.mark.parametrize("mmap", [True, False])
def test_a_damaged_checkpoint_is_refused_not_mapped(tmp_path: Path, data, mmap: bool) -> None:
    vectors, _, _ = data
    index = VectorIndex.build(IndexSpec("flat"), DIM)
    index.add(np.arange(1, 101), vectors[:100])
    ckpt.save(tmp_path, index, ckpt.Checkpoint(id_watermark=100, model="m"))
    path = tmp_path / ckpt.read_pointer(tmp_path).file
    raw = bytearray(path.read_bytes())
    raw[:4] = b"XXXX"  # same size, unknown index type
    path.write_bytes(bytes(raw))
    assert ckpt.load(tmp_path, mmap=mmap) is None  # the caller rebuilds from the database
