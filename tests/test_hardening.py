"""Input limits, API keys and request logs: every limit refused with a 4xx and a message."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image
from fastapi.testclient import TestClient

from app.api.auth import KeyRing
from app.api.app import create_app
from app.settings import Settings
from tests.conftest import TEST_MAX_BODY, TEST_MAX_IMAGE_BYTES, TEST_MAX_TEXT
from tests.images import b64, encode, image_object, photo

EMBED_TEXT = "/perception_encoder/embed_text"
EMBED_IMAGE = "/perception_encoder/embed_image"


def test_declared_body_over_the_limit_is_refused_unread(client: TestClient) -> None:
    body = json.dumps({"text": "x" * (TEST_MAX_BODY + 10)})
    response = client.post(EMBED_TEXT, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "PE_SEARCH_MAX_BODY_BYTES" in response.json()["message"]


def test_streamed_body_is_cut_off_at_the_limit(client: TestClient) -> None:
    sent = []

    def chunks():
        yield b'{"text": "'
        for _ in range(2 * TEST_MAX_BODY // 65536):
            sent.append(1)
            yield b"x" * 65536
        yield b'"}'

    response = client.post(EMBED_TEXT, content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "larger than" in response.json()["message"]


def test_text_limit(client: TestClient) -> None:
    assert client.post(EMBED_TEXT, json={"text": "word " * (TEST_MAX_TEXT // 5)}).status_code == 200
    response = client.post(EMBED_TEXT, json={"text": ["ok", "y" * (TEST_MAX_TEXT + 1)]})
    assert response.status_code == 413 and "Text 1 has" in response.json()["message"]
    compare = client.post("/perception_encoder/compare", json={"subject": "a", "subject_type": "text", "prompt": "z" * (TEST_MAX_TEXT + 1)})
    assert compare.status_code == 413


def test_image_byte_and_pixel_limits(client: TestClient) -> None:
    big = b64(b"\x00" * (TEST_MAX_IMAGE_BYTES + 1000))
    response = client.post(EMBED_IMAGE, json={"image": {"type": "base64", "value": big}})
    assert response.status_code == 400 and "PE_SEARCH_MAX_IMAGE_BYTES" in response.json()["message"]
    huge = encode(Image.new("RGB", (2100, 2000), (90, 120, 30)), "PNG")  # 4.2 Mpx in a few kB
    assert len(huge) < TEST_MAX_IMAGE_BYTES
    response = client.post(EMBED_IMAGE, json={"image": image_object(huge)})
    assert response.status_code == 400 and "2100x2000" in response.json()["message"]


@pytest.mark.parametrize(
    "route,raw",
    [
        (EMBED_TEXT, '{"text": "a", "start": NaN}'),
        (EMBED_TEXT, '{"text": "a", "start": Infinity}'),
        ("/search", '{"text": "a", "min_score": NaN}'),
        ("/search", '{"text": "a", "filter": {"metadata": {"n": NaN}}}'),
        ("/images", '{"image": {"type": "base64", "value": "aaaa"}, "metadata": {"x": [1, NaN]}}'),
    ],
)
def test_non_finite_numbers_are_422(client: TestClient, route: str, raw: str) -> None:
    response = client.post(route, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text


def test_request_id_is_echoed_and_logs_hold_no_keys(client: TestClient, caplog) -> None:
    caplog.set_level(logging.INFO, logger="app.access")
    response = client.post(f"{EMBED_TEXT}?api_key=sk-very-secret", json={"text": "a private sentence"}, headers={"X-Request-ID": "trace-123"})
    assert response.headers["x-request-id"] == "trace-123"
    generated = client.get("/health").headers["x-request-id"]
    assert len(generated) == 32
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "app.access"]
    traced = [line for line in lines if line["request_id"] == "trace-123"]
    assert len(traced) == 1
    assert {k: traced[0][k] for k in ("method", "path", "status")} == {"method": "POST", "path": EMBED_TEXT, "status": 200}
    assert "sk-very-secret" not in caplog.text and "private sentence" not in caplog.text


# --- API keys ---

@pytest.fixture(scope="module")
def secured(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    locked = settings.model_copy(update={"api_keys": "write-key", "read_api_keys": "read-key,other-read", "data_dir": tmp_path_factory.mktemp("secured")})
    app = create_app(locked)
    with TestClient(app) as test_client:
        app.state.registry.get()
        yield test_client


def test_health_and_docs_need_no_key(secured: TestClient) -> None:
    assert secured.get("/health").status_code == 200
    assert secured.get("/ready").status_code == 200
    assert secured.get("/openapi.json").status_code == 200


@pytest.mark.parametrize(
    "kwargs,status",
    [
        ({}, 401),
        ({"params": {"api_key": "wrong"}}, 401),
        ({"params": {"api_key": "read-key"}}, 200),
        ({"headers": {"Authorization": "Bearer other-read"}}, 200),
        ({"body_key": "write-key"}, 200),
        ({"body_key": "nope"}, 401),
        # The query parameter wins over the header, as in Roboflow's server.
        ({"params": {"api_key": "wrong"}, "headers": {"Authorization": "Bearer read-key"}}, 401),
    ],
)
def test_keys_from_query_header_or_body(secured: TestClient, kwargs: dict, status: int) -> None:
    body = {"text": "a cat"}
    if "body_key" in kwargs:
        body["api_key"] = kwargs.pop("body_key")
    response = secured.post(EMBED_TEXT, json=body, **kwargs)
    assert response.status_code == status, response.text
    if status == 401:
        assert "API key" in response.json()["message"] and response.headers["www-authenticate"] == "Bearer"


def test_read_keys_cannot_write(secured: TestClient) -> None:
    image = image_object(encode(photo(64, 64), "PNG"))
    refused = secured.post("/images", json={"image": image}, params={"api_key": "read-key"})
    assert refused.status_code == 403 and "read-only" in refused.json()["message"]
    added = secured.post("/images", json={"image": image}, params={"api_key": "write-key"})
    assert added.status_code == 200
    image_id = added.json()["id"]
    assert secured.get(f"/images/{image_id}", params={"api_key": "read-key"}).status_code == 200
    assert secured.get(f"/images/{image_id}").status_code == 401
    assert secured.delete(f"/images/{image_id}", params={"api_key": "read-key"}).status_code == 403
    assert secured.post("/search", json={"image_id": image_id}, headers={"Authorization": "Bearer read-key"}).status_code == 200
    assert secured.delete(f"/images/{image_id}", params={"api_key": "write-key"}).status_code == 204


def test_keys_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# comment\nalpha write\nbeta read\ngamma\n\n")
    ring = KeyRing.from_settings(Settings(api_keys_file=keys))
    assert (ring.scope_of("alpha"), ring.scope_of("beta"), ring.scope_of("gamma"), ring.scope_of("delta")) == ("write", "read", "write", None)
    keys.write_text("alpha admin\n")
    with pytest.raises(ValueError, match="KEY"):
        KeyRing.from_settings(Settings(api_keys_file=keys))
    assert not KeyRing.from_settings(Settings()).enabled
    assert "write-key" not in repr(Settings(api_keys="write-key"))
