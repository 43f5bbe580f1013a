"""Input limits, API keys and request logs: every limit refused with a 4xx and a message."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.api.keys import KeyRing
from app.settings import Settings
from tests.support.constants import (
    OTHER_READ_KEY,
    READ_KEY,
    TEST_MAX_BODY,
    TEST_MAX_IMAGE_BYTES,
    TEST_MAX_TEXT,
    WRITE_KEY,
)
from tests.support.images import b64, encode, image_object, photo

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
    compare = client.post(
        "/perception_encoder/compare",
        json={"subject": "a", "subject_type": "text", "prompt": "z" * (TEST_MAX_TEXT + 1)},
    )
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
    response = client.post(
        f"{EMBED_TEXT}?api_key=sk-very-secret",
        json={"text": "a private sentence"},
        headers={"X-Request-ID": "trace-123"},
    )
    assert response.headers["x-request-id"] == "trace-123"
    generated = client.get("/health").headers["x-request-id"]
    assert len(generated) == 32
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "app.access"]
    traced = [line for line in lines if line["request_id"] == "trace-123"]
    assert len(traced) == 1
    assert {k: traced[0][k] for k in ("method", "path", "status")} == {
        "method": "POST",
        "path": EMBED_TEXT,
        "status": 200,
    }
    assert "sk-very-secret" not in caplog.text and "private sentence" not in caplog.text


# --- API keys ---


def test_health_and_docs_need_no_key(keyed_client: TestClient) -> None:
    assert keyed_client.get("/health").status_code == 200
    assert keyed_client.get("/ready").status_code == 200
    assert keyed_client.get("/openapi.json").status_code == 200


@pytest.mark.parametrize(
    "kwargs,status",
    [
        ({}, 401),
        ({"params": {"api_key": "wrong"}}, 401),
        ({"params": {"api_key": READ_KEY}}, 200),
        ({"headers": {"Authorization": f"Bearer {OTHER_READ_KEY}"}}, 200),
        ({"body_key": WRITE_KEY}, 200),
        ({"body_key": "nope"}, 401),
        # The query parameter wins over the header, as in Roboflow's server.
        ({"params": {"api_key": "wrong"}, "headers": {"Authorization": f"Bearer {READ_KEY}"}}, 401),
    ],
)
def test_keys_from_query_header_or_body(keyed_client: TestClient, kwargs: dict, status: int) -> None:
    body = {"text": "a cat"}
    if "body_key" in kwargs:
        body["api_key"] = kwargs.pop("body_key")
    response = keyed_client.post(EMBED_TEXT, json=body, **kwargs)
    assert response.status_code == status, response.text
    if status == 401:
        assert "API key" in response.json()["message"] and response.headers["www-authenticate"] == "Bearer"


def test_read_keys_cannot_write(keyed_client: TestClient) -> None:
    image = image_object(encode(photo(64, 64), "PNG"))
    refused = keyed_client.post("/images", json={"image": image}, params={"api_key": READ_KEY})
    assert refused.status_code == 403 and "read-only" in refused.json()["message"]
    added = keyed_client.post("/images", json={"image": image}, params={"api_key": WRITE_KEY})
    assert added.status_code == 200
    image_id = added.json()["id"]
    assert keyed_client.get(f"/images/{image_id}", params={"api_key": READ_KEY}).status_code == 200
    assert keyed_client.get(f"/images/{image_id}").status_code == 401
    assert keyed_client.delete(f"/images/{image_id}", params={"api_key": READ_KEY}).status_code == 403
    bearer = {"Authorization": f"Bearer {READ_KEY}"}
    assert keyed_client.post("/search", json={"image_id": image_id}, headers=bearer).status_code == 200
    assert keyed_client.delete(f"/images/{image_id}", params={"api_key": WRITE_KEY}).status_code == 204


def test_keys_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# comment\nalpha write\nbeta read\ngamma\n\n")
    ring = KeyRing.from_settings(Settings(api_keys_file=keys))
    scopes = [ring.scope_of(key) for key in ("alpha", "beta", "gamma", "delta")]
    assert scopes == ["write", "read", "write", None]
    keys.write_text("alpha admin\n")
    with pytest.raises(ValueError, match="KEY"):
        KeyRing.from_settings(Settings(api_keys_file=keys))
    assert not KeyRing.from_settings(Settings()).enabled
    assert "write-key" not in repr(Settings(api_keys="write-key"))
