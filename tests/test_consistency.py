"""Consistency under concurrency: two stores on one database (as the server and a CLI), threads,
interrupted checkpoints, and racing uploads."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from index.ann import checkpoint as ckpt
from index.filters import SearchFilter
from tests.support.images import encode, image_object, photo
from tests.support.store import DIM, MODEL, add, clustered, open_store


def test_a_reader_catching_up_with_a_writer_never_duplicates_ids(tmp_path: Path, db_url: str) -> None:
    reader = open_store(tmp_path, db_url)
    collection = reader.create_collection("c", model=MODEL, dim=DIM)
    writer = open_store(tmp_path, db_url)
    vectors = clustered(400, seed=11)
    done = threading.Event()

    def write() -> None:
        for start in range(0, 400, 10):
            add(writer, collection.id, vectors[start : start + 10], start=start)
        done.set()

    thread = threading.Thread(target=write)
    thread.start()
    seen_duplicates = []
    while not done.is_set():
        ids = [h.id for h in reader.search(collection.id, vectors[0], 50)]
        if len(ids) != len(set(ids)):
            seen_duplicates.append(ids)
    thread.join()
    ids = [h.id for h in reader.search(collection.id, vectors[0], 400)]
    assert not seen_duplicates and len(ids) == len(set(ids)) == 400
    assert reader.collection("c").indexed == 400


def test_a_rebuild_or_model_switch_elsewhere_is_picked_up(tmp_path: Path, db_url: str) -> None:
    reader = open_store(tmp_path, db_url)
    collection = reader.create_collection("c", model=MODEL, dim=DIM)
    writer = open_store(tmp_path, db_url)
    vectors = clustered(300, seed=12)
    ids = add(writer, collection.id, vectors)
    assert reader.search(collection.id, vectors[5], 1)[0].id == ids[5]
    writer.reindex("c", index_type="hnsw")
    assert reader.search(collection.id, vectors[5], 1)[0].id == ids[5]
    assert reader.collection("c").live_index == "hnsw"
    # A model switch elsewhere changes the dimension: the reader must reload, not fail.
    wider = clustered(300, dim=DIM * 2, seed=13)
    writer.stage_vectors(collection.id, ids, wider)
    writer.switch_model("c", model="PE-Core-B16-224", dim=DIM * 2)
    assert reader.search(collection.id, wider[7], 1)[0].id == ids[7]
    reader.checkpoint()  # must not overwrite the newer generation's checkpoint with a stale one
    assert ckpt.read_pointer(tmp_path / "indexes" / str(collection.id)).dim == DIM * 2


def test_an_interrupted_checkpoint_leaves_the_previous_one_whole(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    collection = store.create_collection("c", model=MODEL, dim=DIM)
    vectors = clustered(100, seed=14)
    ids = add(store, collection.id, vectors[:50])
    store.checkpoint()
    ids += add(store, collection.id, vectors[50:], start=50)
    directory = tmp_path / "indexes" / str(collection.id)
    # What a kill -9 inside ckpt.save leaves: a half-written temp file beside the last good pair.
    (directory / ".index-2.faiss.abc123.tmp").write_bytes(b"\x00" * 1000)
    (directory / ".CHECKPOINT.json.def456.tmp").write_text('{"file": "index-2.fa')
    store.engine.dispose()
    reopened = open_store(tmp_path)
    assert reopened.collection("c").indexed == 100
    assert reopened.search(collection.id, vectors[75], 1)[0].id == ids[75]


def test_changed_file_replaces_its_old_image(tmp_path: Path, encoder) -> None:  # noqa: ANN001
    from app.ingest.sources import folder_items
    from tests.support.ingest import ingestor, make_folder

    store = open_store(tmp_path / "store")
    paths = make_folder(tmp_path / "photos", count=3)
    ingestor(store, encoder).run(folder_items(tmp_path / "photos"), collection="c")
    info = store.collection("c")
    old_ids = set(store.images(list(range(1, 20))))
    paths[0].write_bytes(encode(photo(90, 60, seed=77), "PNG"))
    summary = ingestor(store, encoder).run(folder_items(tmp_path / "photos"), collection="c")
    assert summary.added == 1
    info = store.collection("c")
    assert info.count == 3 and info.indexed == 3
    new_ids = set(store.images(list(range(1, 20))))
    assert len(old_ids - new_ids) == 1 and len(new_ids - old_ids) == 1


def test_created_range_honours_timezones(tmp_path: Path, db_url: str) -> None:
    store = open_store(tmp_path, db_url)
    collection = store.create_collection("c", model=MODEL, dim=DIM)
    add(store, collection.id, clustered(3, seed=15))
    hour_ago = datetime.now(timezone(timedelta(hours=5))) - timedelta(hours=1)
    assert len(store.search(collection.id, clustered(1)[0], 10, SearchFilter(created_after=hour_ago))) == 3
    assert store.search(collection.id, clustered(1)[0], 10, SearchFilter(created_before=hour_ago)) == []
    image = store.image(store.search(collection.id, clustered(1)[0], 1)[0].id)
    assert image.created_at.tzinfo is not None


def test_racing_uploads_of_the_same_bytes(client: TestClient) -> None:
    data = encode(photo(120, 90, seed=4242), "JPEG")

    def upload(_: int):  # noqa: ANN202
        return client.post("/images", json={"image": image_object(data), "collection": "racing"})

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(upload, range(16)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(r.json()["created"] for r in responses) == 1
    client.delete("/collections/racing")


def test_concurrent_patches_lose_no_keys(client: TestClient) -> None:
    image_id = client.post(
        "/images", json={"image": image_object(encode(photo(60, 60, seed=4343), "PNG")), "collection": "patches"}
    ).json()["id"]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: client.patch(f"/images/{image_id}", json={"metadata": {f"k{i}": i}}), range(24)))
    assert client.get(f"/images/{image_id}").json()["metadata"] == {f"k{i}": i for i in range(24)}
    client.delete("/collections/patches")


@pytest.mark.parametrize(
    "method,route,kwargs,status",
    [
        ("post", "/images", {"content": b"\xff\xfe\x00binary", "headers": {"content-type": "application/json"}}, 422),
        ("post", "/images", {"content": b"hello", "headers": {"content-type": "text/plain"}}, 415),
        ("get", f"/images/{2**63}", {}, 422),
        ("post", "/search", {"json": {"image_id": 2**64}}, 422),
        ("post", "/search", {"json": {"text": "x", "collection": "../../etc"}}, 422),
        ("post", "/search", {"json": {"text": "x", "perception_encoder_version_id": "PE-Core-X"}}, 400),
        ("post", "/search", {"json": {"text": "x", "filter": {"metadata": {'a"b': 1}}}}, 400),
        ("post", "/images", {"files": {"file": ("x.png", b"1")}, "data": {"collection": "../up"}}, 422),
    ],
)
def test_odd_requests_get_4xx(client: TestClient, method: str, route: str, kwargs: dict, status: int) -> None:
    client.post("/collections", json={"name": "default"})
    response = getattr(client, method)(route, **kwargs)
    assert response.status_code == status, response.text


def test_a_failed_checkpoint_keeps_the_previous_one(tmp_path: Path, monkeypatch, caplog) -> None:
    import errno

    import faiss

    store = open_store(tmp_path)
    collection = store.create_collection("c", model=MODEL, dim=DIM)
    vectors = clustered(60, seed=16)
    ids = add(store, collection.id, vectors[:30])
    assert store.checkpoint()
    directory = tmp_path / "indexes" / str(collection.id)
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    ids += add(store, collection.id, vectors[30:], start=30)

    def disk_full(index, path):  # noqa: ANN001
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(faiss, "write_index", disk_full)
    assert store.checkpoint() is False
    assert "previous checkpoint is intact" in caplog.text
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before  # no temp file left either
    assert store.search(collection.id, vectors[45], 1)[0].id == ids[45]
    monkeypatch.undo()
    store.engine.dispose()
    reopened = open_store(tmp_path)
    assert reopened.collection("c").indexed == 60
