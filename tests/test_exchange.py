"""Export and import: Parquet metadata with .npy shards (or an embedding column), round-tripped bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from app.errors import InvalidInputError
from app.services.exchange.reader import check_export, import_collection
from app.services.exchange.writer import export_collection
from index.errors import ModelMismatchError
from index.store import VectorStore
from tests.support.constants import TEST_DIM, TEST_MODEL
from tests.support.server import REPO_ROOT, server_env
from tests.support.store import clustered, items, open_store

N = 2_500


@pytest.fixture()
def source(tmp_path: Path, db_url: str) -> VectorStore:
    store = open_store(tmp_path / "src", db_url)
    info = store.create_collection("photos", model=TEST_MODEL, dim=TEST_DIM)
    rows = items(clustered(N, dim=TEST_DIM), meta=lambda i: {"n": i, "tag": "é" if i % 3 else None, "deep": {"a": [i]}})
    for start in range(0, N, 1000):
        store.add_images(info.id, rows[start : start + 1000])
    yield store
    store.engine.dispose()


def vectors_by_sha(store: VectorStore, name: str) -> dict[str, tuple[bytes, dict, object]]:
    info = store.collection(name)
    out = {}
    for records, vectors in store.iter_with_vectors(info.id, up_to=store.id_watermark(info.id)):
        for record, vector in zip(records, vectors):
            out[record.sha256] = (vector.tobytes(), record.meta, record.created_at)
    return out


def answers(store: VectorStore, name: str, queries: np.ndarray) -> list[list[tuple[str, float]]]:
    info = store.collection(name)
    sha = {r.id: r.sha256 for batch in store.iter_images(info.id) for r in batch}
    return [[(sha[h.id], round(h.score, 6)) for h in store.search(info.id, q, 10)] for q in queries]


@pytest.mark.parametrize("fmt", ["npy", "parquet"])
def test_export_then_import_round_trips_bit_for_bit(source: VectorStore, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "export"
    manifest = export_collection(source, collection="photos", out=out, fmt=fmt, shard_rows=1000)
    assert manifest.count == N and [s.rows for s in manifest.shards] == [1000, 1000, 500]
    body = json.loads((out / "manifest.json").read_text())
    assert (body["model"], body["dim"], body["count"]) == (TEST_MODEL, TEST_DIM, N)
    meta = pq.read_table(out / "metadata" / "metadata_0000.parquet")
    assert {"id", "uri", "image_path", "sha256", "metadata"} <= set(meta.column_names)
    if fmt == "npy":
        shard = np.load(out / "img_emb" / "img_emb_0000.npy")
        assert shard.dtype == np.float32 and shard.shape == (1000, TEST_DIM)

    target = open_store(tmp_path / "dst")
    result = import_collection(target, source=out, collection="copy")
    assert (result.added, result.matched, result.created_collection) == (N, 0, True)
    assert vectors_by_sha(target, "copy") == vectors_by_sha(source, "photos")
    queries = clustered(5, dim=TEST_DIM, seed=9)
    assert answers(target, "copy", queries) == answers(source, "photos", queries)
    # Importing again extends nothing: the same content is matched, not added twice.
    again = import_collection(target, source=out, collection="copy")
    assert (again.added, again.matched) == (0, N) and target.collection("copy").count == N
    target.engine.dispose()


def test_an_export_excludes_rows_committed_after_it_started(
    source: VectorStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = source.collection("photos")
    reading = source.iter_with_vectors

    def with_a_concurrent_writer(collection_id: int, *, up_to: int, batch: int):
        for number, part in enumerate(reading(collection_id, up_to=up_to, batch=batch)):
            if number == 0:  # mid-export, another writer commits more rows
                source.add_images(info.id, items(clustered(3, dim=TEST_DIM, seed=5), start=10_000))
            yield part

    monkeypatch.setattr(source, "iter_with_vectors", with_a_concurrent_writer)
    manifest = export_collection(source, collection="photos", out=tmp_path / "e", shard_rows=1000)
    assert manifest.count == N and source.collection("photos").count == N + 3
    assert check_export(tmp_path / "e").count == N


def test_damaged_or_mismatched_exports_are_refused_before_writing(source: VectorStore, tmp_path: Path) -> None:
    out = tmp_path / "export"
    export_collection(source, collection="photos", out=out, shard_rows=1000)
    target = open_store(tmp_path / "dst")

    def refused(match: str, exc: type[Exception] = InvalidInputError) -> None:
        with pytest.raises(exc, match=match):
            import_collection(target, source=out, collection="copy")
        assert target.model_of("copy") is None  # nothing written, not even the collection

    shard = out / "img_emb" / "img_emb_0001.npy"
    good = shard.read_bytes()
    shard.write_bytes(good[: len(good) // 2])
    refused("img_emb_0001.npy")
    vectors = np.load(out / "img_emb" / "img_emb_0000.npy")
    shard.write_bytes(good)
    broken = vectors.copy()
    broken[7, 3] = np.nan
    np.save(out / "img_emb" / "img_emb_0000.npy", broken)
    refused("NaN")
    np.save(out / "img_emb" / "img_emb_0000.npy", vectors)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "dim": 1024}))
    refused("1024")
    (out / "manifest.json").write_text(json.dumps({**manifest, "model": "PE-Core-X99"}))
    refused("PE-Core-X99")
    (out / "manifest.json").write_text("{not json")
    refused("damaged")
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "metadata" / "metadata_0002.parquet").write_bytes(b"PAR1 not really")
    refused("metadata_0002")
    (out / "manifest.json").unlink()
    refused("no manifest.json")
    # Into an existing collection of another model: refused as the store refuses any such write.
    export_collection(source, collection="photos", out=tmp_path / "fresh")
    target.create_collection("b16", model="PE-Core-B16-224", dim=1024)
    with pytest.raises(ModelMismatchError):
        import_collection(target, source=tmp_path / "fresh", collection="b16")
    assert target.collection("b16").count == 0
    with pytest.raises(InvalidInputError, match="not empty"):
        export_collection(source, collection="photos", out=tmp_path / "fresh")
    target.engine.dispose()


def test_cli_export_and_import_between_data_dirs(tmp_path: Path) -> None:
    src, dst = tmp_path / "a", tmp_path / "b"
    store = open_store(src, f"sqlite:///{src / 'pe-search.db'}")  # the CLI's layout of a data dir
    info = store.create_collection("photos", model=TEST_MODEL, dim=TEST_DIM)
    store.add_images(info.id, items(clustered(300, dim=TEST_DIM)))
    store.close()

    def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "app.cli", *args],
            cwd=REPO_ROOT,
            env=server_env(data_dir, TEST_MODEL),
            capture_output=True,
            text=True,
            timeout=120,
        )

    exported = cli(src, "export", "--collection", "photos", "--out", str(tmp_path / "x"))
    assert exported.returncode == 0 and "300 vectors" in exported.stdout, exported.stderr
    imported = cli(dst, "import", str(tmp_path / "x"))
    assert imported.returncode == 0 and "300 added" in imported.stdout, imported.stderr
    listed = cli(dst, "collections", "--json")
    assert [(c["name"], c["count"]) for c in json.loads(listed.stdout)] == [("photos", 300)]
    again = cli(src, "export", "--collection", "photos", "--out", str(tmp_path / "x"))
    assert again.returncode != 0 and "not empty" in again.stderr


def test_bad_rows_are_refused_before_the_first_write(source: VectorStore, tmp_path: Path) -> None:
    import pyarrow as pa

    out = tmp_path / "export"
    export_collection(source, collection="photos", out=out, shard_rows=1000, fmt="parquet")
    target = open_store(tmp_path / "dst")
    last = out / "metadata" / "metadata_0002.parquet"
    good = pq.read_table(last)

    def with_column(name: str, values: list) -> None:
        column = good.schema.field(name)
        pq.write_table(good.set_column(good.schema.get_field_index(name), column, pa.array(values, column.type)), last)

    def refused(match: str) -> None:
        with pytest.raises(InvalidInputError, match=match):
            import_collection(target, source=out, collection="copy")
        assert target.model_of("copy") is None  # shards 0 and 1 were fine, and still nothing was written

    metadata = good.column("metadata").to_pylist()
    with_column("metadata", metadata[:-1] + ["{not json"])
    refused("unreadable metadata")
    with_column("metadata", metadata[:-1] + ['{"x": NaN}'])
    refused("unreadable metadata")
    with_column("metadata", metadata[:-1] + ["[1, 2]"])
    refused("JSON objects")
    widths = good.column("width").to_pylist()
    with_column("width", widths[:-1] + [None])
    refused("width has empty")
    vectors = np.asarray(good.column("embedding").to_pylist(), dtype=np.float32)
    vectors[3] *= 2
    with_column("embedding", list(vectors))
    refused("not unit length")
    pq.write_table(good.drop_columns(["embedding"]).append_column("embedding", pa.array(list(vectors[:, :8]))), last)
    refused("not 512 float32")
    pq.write_table(good, last)
    assert import_collection(target, source=out, collection="copy").added == N
    target.engine.dispose()
