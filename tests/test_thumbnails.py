"""Thumbnails: size, aspect, caching headers, 304s, and the cache on disk."""

from __future__ import annotations

import io

from fastapi.testclient import TestClient
from PIL import Image

from tests.support.images import encode, image_object, photo


def test_thumbnail_sizes_and_caching(client: TestClient, settings) -> None:  # noqa: ANN001
    image_id = client.post(
        "/images", json={"image": image_object(encode(photo(400, 300, seed=31), "PNG")), "collection": "thumbs"}
    ).json()["id"]
    response = client.get(f"/images/{image_id}/thumbnail", params={"size": 200})
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(response.content))
    assert (thumb.format, thumb.size) == ("JPEG", (256, 192))  # the next size up, aspect kept
    etag = response.headers["etag"]
    assert "immutable" in response.headers["cache-control"]
    again = client.get(f"/images/{image_id}/thumbnail", params={"size": 200}, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert Image.open(io.BytesIO(client.get(f"/images/{image_id}/thumbnail").content)).size == (256, 192)
    small = Image.open(io.BytesIO(client.get(f"/images/{image_id}/thumbnail", params={"size": 64}).content))
    assert small.size == (128, 96)
    assert len(list((settings.data_dir / "thumbnails").rglob("*.jpg"))) >= 2
    assert client.get("/images/99999999/thumbnail").status_code == 404
    assert client.get(f"/images/{image_id}/thumbnail", params={"size": 0}).status_code == 422
    client.delete("/collections/thumbs")


def test_thumbnail_of_a_moved_file_is_404(client: TestClient, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from tests.support.ingest import make_folder

    paths = make_folder(tmp_path / "root", count=1)
    monkeypatch.setattr(client.app.state.settings, "ingest_roots", str(tmp_path))
    job = client.post("/ingest", json={"source": str(tmp_path / "root"), "collection": "moved"}).json()["id"]
    client.app.state.services.jobs.wait_idle(60)
    assert client.get(f"/ingest/{job}").json()["status"] == "done"
    image_id = client.post("/search", json={"text": "x", "collection": "moved"}).json()["results"][0]["id"]
    paths[0].unlink()
    response = client.get(f"/images/{image_id}/thumbnail")
    assert response.status_code == 404 and "no longer" in response.json()["message"]
    client.delete("/collections/moved")
