"""The search, image, collection and ingest routes through the app (real SQLite, FAISS, encoder)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.support.images import encode, image_object, photo
from tests.support.ingest import make_folder


def upload(client: TestClient, data: bytes, collection: str, metadata: dict | None = None) -> dict:
    response = client.post(
        "/images",
        files={"file": ("photo.jpg", data, "image/jpeg")},
        data={"collection": collection, "metadata": json.dumps(metadata or {})},
    )
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture()
def photos(client: TestClient, request: pytest.FixtureRequest) -> tuple[str, list[bytes], list[int]]:
    collection = re.sub(r"[^\w.-]", "-", request.node.name)[:60]
    images = [encode(photo(240, 180, seed=500 + i), "JPEG") for i in range(6)]
    ids = [
        upload(client, data, collection, {"label": "cat" if i % 2 else "dog", "n": i})["id"]
        for i, data in enumerate(images)
    ]
    yield collection, images, ids
    client.delete(f"/collections/{collection}")


def search(client: TestClient, **body) -> dict:
    response = client.post("/search", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_uploaded_image_finds_itself_first(client: TestClient, photos) -> None:
    collection, images, ids = photos
    for data, image_id in zip(images, ids):
        result = search(client, image=image_object(data), collection=collection, top_k=3)
        top = result["results"][0]
        assert top["id"] == image_id and top["score"] == pytest.approx(1.0, abs=1e-4)
        assert set(top) == {"id", "score", "uri", "width", "height", "format", "metadata", "file_url"}
        assert (top["width"], top["height"], top["format"]) == (240, 180, "JPEG")


def test_search_by_id_text_and_get(client: TestClient, photos) -> None:
    collection, _, ids = photos
    by_id = search(client, image_id=ids[2], collection=collection, top_k=6)["results"]
    assert by_id[0]["id"] == ids[2] and len(by_id) == 6
    scores = [r["score"] for r in by_id]
    assert scores == sorted(scores, reverse=True)
    text = search(client, text="a dog on a beach", collection=collection, top_k=4)
    assert len(text["results"]) == 4 and text["time"] > 0
    response = client.get("/search", params={"q": "a dog on a beach", "k": 4, "collection": collection})
    assert response.status_code == 200
    assert [r["id"] for r in response.json()["results"]] == [r["id"] for r in text["results"]]
    assert "encode;dur=" in response.headers["Server-Timing"] and "faiss;dur=" in response.headers["Server-Timing"]


def test_search_filters_and_min_score(client: TestClient, photos) -> None:
    collection, _, ids = photos
    cats = search(client, image_id=ids[0], collection=collection, filter={"metadata": {"label": "cat"}})["results"]
    assert {r["id"] for r in cats} == {ids[1], ids[3], ids[5]}
    some = search(client, image_id=ids[0], collection=collection, filter={"metadata": {"n": [0, 4]}})["results"]
    assert {r["id"] for r in some} == {ids[0], ids[4]}
    assert search(client, image_id=ids[0], collection=collection, filter={"uri_prefix": "upload://"})["results"]
    assert search(client, image_id=ids[0], collection=collection, filter={"uri_prefix": "/nowhere"})["results"] == []
    future = search(client, image_id=ids[0], collection=collection, filter={"created_after": "2999-01-01T00:00:00Z"})
    assert future["results"] == []
    high = search(client, image_id=ids[0], collection=collection, min_score=0.99999)["results"]
    assert [r["id"] for r in high] == [ids[0]]


@pytest.mark.parametrize(
    "body,status,message",
    [
        ({"collection": "missing-collection", "text": "x"}, 404, "No collection"),
        # Both fields are parts of one composed query: the missing image is named by its part.
        ({"text": "x", "image_id": 99_999_999}, 404, "part 2 (image_id)"),
        ({}, 422, "empty"),
        ({"image_id": 99_999_999}, 404, "No image"),
    ],
)
def test_search_errors(client: TestClient, photos, body: dict, status: int, message: str) -> None:
    body.setdefault("collection", photos[0])
    response = client.post("/search", json=body)
    assert response.status_code == status and message in response.json()["message"]


def test_search_knobs_are_bounded(client: TestClient, photos) -> None:
    response = client.post("/search", json={"collection": photos[0], "text": "x", "rerank": 101})
    assert response.status_code == 422 and "rerank" in response.text


def test_model_mismatch_is_409(client: TestClient, photos) -> None:
    collection, images, _ = photos
    response = client.post(
        "/search", json={"collection": collection, "text": "x", "perception_encoder_version_id": "PE-Core-B16-224"}
    )
    assert response.status_code == 409 and "PE-Core-T16-384" in response.json()["message"]
    client.post("/collections", json={"name": "l14-only", "perception_encoder_version_id": "PE-Core-L14-336"})
    try:
        refused = client.post(
            "/images",
            json={
                "image": image_object(images[0]),
                "collection": "l14-only",
                "perception_encoder_version_id": "PE-Core-T16-384",
            },
        )
        assert refused.status_code == 409 and "PE-Core-L14-336" in refused.json()["message"]
        cross = client.post("/search", json={"collection": "l14-only", "image_id": photos[2][0]})
        assert cross.status_code == 409
    finally:
        client.delete("/collections/l14-only")


def test_duplicate_upload_returns_the_existing_id(client: TestClient, photos) -> None:
    collection, images, ids = photos
    again = client.post(
        "/images", json={"image": image_object(images[3]), "collection": collection, "metadata": {"x": 1}}
    )
    assert again.status_code == 200 and again.json() == {"id": ids[3], "created": False, "collection": collection}


def test_image_record_file_patch_delete(client: TestClient, photos) -> None:
    collection, images, ids = photos
    record = client.get(f"/images/{ids[1]}").json()
    assert record["collection"] == collection and record["metadata"] == {"label": "cat", "n": 1}
    assert record["byte_size"] == len(images[1]) and record["uri"].startswith("upload://")
    file = client.get(f"/images/{ids[1]}/file")
    assert file.status_code == 200 and file.content == images[1] and file.headers["content-type"] == "image/jpeg"
    patched = client.patch(f"/images/{ids[1]}", json={"metadata": {"label": None, "color": "grey"}}).json()
    assert patched["metadata"] == {"n": 1, "color": "grey"}
    assert client.delete(f"/images/{ids[1]}").status_code == 204
    assert client.get(f"/images/{ids[1]}").status_code == 404
    assert ids[1] not in {
        r["id"] for r in search(client, image=image_object(images[1]), collection=collection, top_k=10)["results"]
    }
    assert client.delete(f"/images/{ids[1]}").status_code == 404


def test_upload_errors(client: TestClient) -> None:
    bad = client.post("/images", files={"file": ("x.jpg", b"not an image", "image/jpeg")}, data={"collection": "errs"})
    assert bad.status_code == 400 and "Could not load input image" in bad.json()["message"]
    meta = client.post(
        "/images", files={"file": ("x.jpg", encode(photo(), "JPEG"), "image/jpeg")}, data={"metadata": "[1]"}
    )
    assert meta.status_code == 400 and "JSON object" in meta.json()["message"]
    assert client.post("/images", json={"metadata": {}}).status_code == 422
    assert client.post("/images", files={"other": ("x", b"1")}).status_code == 400


def test_collections_routes(client: TestClient, photos) -> None:
    collection = photos[0]
    listed = {c["name"]: c for c in client.get("/collections").json()}
    assert listed[collection]["count"] == 6 and listed[collection]["model"] == "PE-Core-T16-384"
    assert listed[collection]["dim"] == 512 and listed[collection]["live_index"] == "flat"
    assert listed[collection]["tuned"] == {}  # exact search has nothing to tune
    # Knobs of other index kinds are accepted and change nothing for an exact index.
    plain = search(client, text="a photo", collection=collection, top_k=3)["results"]
    knobbed = search(client, text="a photo", collection=collection, top_k=3, rerank=4, nprobe=2)["results"]
    assert [r["id"] for r in knobbed] == [r["id"] for r in plain]
    created = client.post("/collections", json={"name": "made-empty", "index_type": "hnsw"})
    assert created.status_code == 201 and created.json()["count"] == 0
    assert client.post("/collections", json={"name": "made-empty"}).status_code == 409
    assert client.post("/collections", json={"name": "bad name/"}).status_code == 422
    assert client.delete("/collections/made-empty").status_code == 204
    assert client.delete("/collections/made-empty").status_code == 404


def test_server_side_ingest_job(client: TestClient, tmp_path: Path, monkeypatch) -> None:
    make_folder(tmp_path / "allowed" / "photos", count=4)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.setattr(client.app.state.settings, "ingest_roots", str(tmp_path / "allowed"))
    refused = client.post("/ingest", json={"source": str(tmp_path / "elsewhere"), "collection": "job"})
    assert refused.status_code == 403 and "PE_SEARCH_INGEST_ROOTS" in refused.json()["message"]
    sneaky = client.post(
        "/ingest", json={"source": str(tmp_path / "allowed" / ".." / "elsewhere"), "collection": "job"}
    )
    assert sneaky.status_code == 403
    started = client.post("/ingest", json={"source": str(tmp_path / "allowed" / "photos"), "collection": "job"})
    assert started.status_code == 202
    job_id = started.json()["id"]
    client.app.state.services.jobs.wait_idle(60)  # the single job thread has finished the job
    job = client.get(f"/ingest/{job_id}").json()
    assert job["status"] == "done" and job["summary"]["added"] == 4 and job["summary"]["failed"] == 2
    assert client.get("/search", params={"q": "x", "collection": "job"}).json()["results"]
    file = client.get(f"/images/{search(client, text='x', collection='job')['results'][0]['id']}/file")
    assert file.status_code == 200
    assert client.get("/ingest/nope").status_code == 404
    client.delete("/collections/job")


def test_folder_file_is_served_only_under_its_root(client: TestClient, tmp_path: Path, monkeypatch) -> None:
    paths = make_folder(tmp_path / "root", count=2)
    monkeypatch.setattr(client.app.state.settings, "ingest_roots", str(tmp_path))
    job_id = client.post("/ingest", json={"source": str(tmp_path / "root"), "collection": "served"}).json()["id"]
    client.app.state.services.jobs.wait_idle(60)
    assert client.get(f"/ingest/{job_id}").json()["status"] == "done"
    hits = search(client, text="x", collection="served")["results"]
    by_uri = {h["uri"]: h["id"] for h in hits}
    image_id = by_uri[str(paths[1].resolve())]
    assert client.get(f"/images/{image_id}/file").content == paths[1].read_bytes()
    paths[1].unlink()
    paths[1].symlink_to(tmp_path / "elsewhere.png")
    (tmp_path / "elsewhere.png").write_bytes(b"outside")
    gone = client.get(f"/images/{image_id}/file")
    assert gone.status_code == 404 and "no longer" in gone.json()["message"]
    client.delete("/collections/served")


def test_openapi_lists_the_store_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for route in (
        "/search",
        "/images",
        "/images/{image_id}",
        "/images/{image_id}/file",
        "/collections",
        "/collections/{name}",
        "/ingest",
        "/ingest/{job_id}",
    ):
        assert route in paths, route
