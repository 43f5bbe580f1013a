"""End-to-end over real HTTP: a real `pe-search serve` (uvicorn) process, driven with `requests`.

Three server processes, each started once per module:

* `server`: PE-Core-T16-384 (dim 512), random weights, for the round trips and errors.
* `keyed_server`: the same model in another process, with an API key and no text cache.
* `default_server`: no model override at all, so it serves the default PE-Core-L14-336
  (dim 1024), random weights; only Roboflow's documented client sample uses it.
"""

from __future__ import annotations

import base64
import contextlib
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.support.images import encode, image_object, photo
from tests.support.server import (
    LOG_TAIL_LINES,
    READY_DEADLINE,
    REQUEST_TIMEOUT,
    T16,
    T16_DIM,
    Server,
    launch,
    wait_ready,
    wanted,
)

DEFAULT_MODEL = "PE-Core-L14-336"
DEFAULT_DIM = 1024
EMBED_KEYS = {"inference_id", "frame_id", "time", "embeddings"}
COMPARE_KEYS = {"inference_id", "frame_id", "time", "similarity", "parent_id"}
# Every test here drives a real uvicorn process (three of them start once per module).
pytestmark = pytest.mark.slow


SERVER_KEY = "server-key"
# Each module server: its model (None: no override, the default model) and extra environment.
SERVERS: dict[str, tuple[str | None, dict[str, str]]] = {
    "server": (T16, {}),
    # A second T16 process: API keys required, and no text cache, so every text is embedded afresh.
    "keyed_server": (T16, {"PE_SEARCH_API_KEYS": SERVER_KEY, "PE_SEARCH_TEXT_CACHE_SIZE": "0"}),
    # On torch: the default variant is what this server is about, and exporting L14 (2.7 GB of ONNX) for
    # one module would cost minutes and disk; the exported runtimes are tested on the test model.
    "default_server": (None, {"PE_SEARCH_RUNTIME": "torch"}),
}

# Servers launched ahead of the fixture that owns them, so their slow start overlaps other tests.
_prelaunched: dict[str, Server] = {}


def _launch_named(tmp_path_factory: pytest.TempPathFactory, name: str) -> Server:
    model, extra_env = SERVERS[name]
    return launch(tmp_path_factory.mktemp(name), model, extra_env)


def _prelaunch(tmp_path_factory: pytest.TempPathFactory, name: str) -> None:
    if name not in _prelaunched:
        _prelaunched[name] = _launch_named(tmp_path_factory, name)


def _stop_prelaunched() -> None:
    while _prelaunched:
        _prelaunched.popitem()[1].stop()


def _start_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, name: str):
    server = _prelaunched.pop(name, None)
    for _attempt in range(3):
        if server is None:
            server = _launch_named(tmp_path_factory, name)
        problem = wait_ready(server, READY_DEADLINE)
        if problem is None:
            break
        server.stop()
        # The port found free may have been taken before uvicorn bound it: try another.
        if "address already in use" not in server.log_tail().lower():
            break
        server = None
    if problem is not None:
        pytest.fail(
            f"pe-search server did not start: {problem}\n--- server log (stdout and stderr) ---\n{server.log_tail()}",
            pytrace=False,
        )

    failed_before = request.session.testsfailed
    try:
        yield server
    finally:
        server.stop()
        if request.session.testsfailed > failed_before:
            # Written past pytest's capture: the test that failed may not be the one tearing down.
            capture = request.config.pluginmanager.getplugin("capturemanager")
            with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
                sys.stderr.write(
                    f"\n--- pe-search server log ({name}, port {server.port}), "
                    f"last {LOG_TAIL_LINES} lines ---\n{server.log_tail()}\n--- end of server log ---\n"
                )


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    # Start the other servers now (the default model takes the longest) if a selected test needs them.
    for other in ("default_server", "keyed_server"):
        if wanted(request, other):
            _prelaunch(tmp_path_factory, other)
    try:
        yield from _start_server(request, tmp_path_factory, "server")
    finally:
        _stop_prelaunched()  # never claimed (its test was not reached): do not leak the process


@pytest.fixture(scope="module")
def keyed_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    yield from _start_server(request, tmp_path_factory, "keyed_server")


@pytest.fixture(scope="module")
def default_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    yield from _start_server(request, tmp_path_factory, "default_server")


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    return encode(photo(320, 240, seed=3), "JPEG", quality=90)


def _assert_embedding_response(response: requests.Response, count: int, dim: int) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == EMBED_KEYS, body.keys()
    assert body["inference_id"] is None or isinstance(body["inference_id"], str)
    assert body["frame_id"] is None or isinstance(body["frame_id"], int)
    assert isinstance(body["time"], float) and body["time"] >= 0
    vectors = np.asarray(body["embeddings"], dtype=np.float64)
    assert vectors.shape == (count, dim)
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    return vectors


# --- round trips on the T16 server -----------------------------------------------------------


def test_ready_and_health_report_the_model(server: Server):
    ready = requests.get(f"{server.url}/ready", timeout=10)
    assert ready.status_code == 200
    health = requests.get(f"{server.url}/health", timeout=10).json()
    assert health["status"] == "ok"
    assert health["default_model"] == T16
    assert health["random_weights"] is True
    assert [m["dim"] for m in health["models"]] == [T16_DIM]


def test_embed_image_single_and_list(server: Server, jpeg: bytes):
    one = _assert_embedding_response(server.post("embed_image", {"image": image_object(jpeg)}), 1, T16_DIM)
    other = encode(photo(200, 300, seed=11), "PNG")
    both = _assert_embedding_response(
        server.post("embed_image", {"image": [image_object(jpeg), image_object(other)]}), 2, T16_DIM
    )
    np.testing.assert_allclose(both[0], one[0], atol=1e-5)
    assert not np.allclose(both[0], both[1], atol=1e-3)


def test_embed_text_single_and_list(server: Server):
    one = _assert_embedding_response(server.post("embed_text", {"text": "a photo of a cat"}), 1, T16_DIM)
    many = _assert_embedding_response(
        server.post("embed_text", {"text": ["a photo of a cat", "a dog on a beach"]}), 2, T16_DIM
    )
    np.testing.assert_allclose(many[0], one[0], atol=1e-5)
    assert not np.allclose(many[0], many[1], atol=1e-3)


def test_same_inputs_give_identical_vectors_in_two_processes_and_without_the_text_cache(
    server: Server, keyed_server: Server, jpeg: bytes
):
    """Random weights are seeded, so both processes hold the same model; keyed_server has no text
    cache, so each of its two passes computes the texts again."""
    texts = {"text": ["a red bicycle leaning on a wall", "two dogs on a beach"]}
    images = {"image": [image_object(jpeg), image_object(encode(photo(200, 300, seed=11), "PNG"))]}
    auth = {"Authorization": f"Bearer {SERVER_KEY}"}
    text_vectors = _assert_embedding_response(server.post("embed_text", texts), 2, T16_DIM)
    image_vectors = _assert_embedding_response(server.post("embed_image", images), 2, T16_DIM)
    for _pass in range(2):
        again = _assert_embedding_response(keyed_server.post("embed_text", texts, headers=auth), 2, T16_DIM)
        np.testing.assert_allclose(again, text_vectors, rtol=0, atol=1e-6)
        again = _assert_embedding_response(keyed_server.post("embed_image", images, headers=auth), 2, T16_DIM)
        np.testing.assert_allclose(again, image_vectors, rtol=0, atol=1e-6)


@pytest.mark.parametrize("place", ["query", "bearer", "body"])
def test_api_key_in_query_header_or_body_is_accepted_and_a_wrong_or_missing_one_is_401(
    keyed_server: Server, place: str
):
    def send(key: str | None) -> requests.Response:
        body, kwargs = {"text": "a cat", "unknown_field": 1}, {}
        if key is not None and place == "query":
            kwargs["params"] = {"api_key": key, "countinference": "false"}
        elif key is not None and place == "bearer":
            kwargs["headers"] = {"Authorization": f"Bearer {key}"}
        elif key is not None:
            body["api_key"] = key
        return keyed_server.post("embed_text", body, **kwargs)

    _assert_embedding_response(send(SERVER_KEY), 1, T16_DIM)
    for refused in (send("not-the-key"), send(None)):
        assert refused.status_code == 401, refused.text[:200]
        assert "API key" in refused.json()["message"] and refused.headers["www-authenticate"] == "Bearer"


def test_compare_list_prompt_is_plain_cosine(server: Server, jpeg: bytes):
    prompts = ["a photo of a cat", "a dog on a beach", "a city at night"]
    response = server.post(
        "compare",
        {"subject": image_object(jpeg), "subject_type": "image", "prompt": prompts, "prompt_type": "text"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == COMPARE_KEYS, body.keys()
    assert body["parent_id"] is None
    assert isinstance(body["time"], float)
    similarity = body["similarity"]
    assert isinstance(similarity, list) and len(similarity) == len(prompts)
    assert all(-1.0 <= s <= 1.0 for s in similarity)

    image_vec = np.asarray(server.post("embed_image", {"image": image_object(jpeg)}).json()["embeddings"][0])
    text_vecs = np.asarray(server.post("embed_text", {"text": prompts}).json()["embeddings"])
    np.testing.assert_allclose(similarity, text_vecs @ image_vec, atol=1e-4)


def test_compare_dict_prompt_keeps_keys(server: Server, jpeg: bytes):
    prompts = {"cat": "a photo of a cat", "dog": "a dog on a beach"}
    listed = server.post("compare", {"subject": image_object(jpeg), "prompt": list(prompts.values())}).json()
    response = server.post("compare", {"subject": image_object(jpeg), "prompt": prompts})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == COMPARE_KEYS
    assert isinstance(body["similarity"], dict)
    assert list(body["similarity"]) == ["cat", "dog"]
    np.testing.assert_allclose(list(body["similarity"].values()), listed["similarity"], atol=1e-5)


def test_compare_single_prompt_and_text_subject(server: Server):
    response = server.post(
        "compare", {"subject": "a cat", "subject_type": "text", "prompt": "a cat", "prompt_type": "text"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == COMPARE_KEYS
    assert len(body["similarity"]) == 1
    assert body["similarity"][0] == pytest.approx(1.0, abs=1e-4)


# --- error bodies over real HTTP ---------------------------------------------------------------


def test_bad_base64_is_400_with_roboflow_message(server: Server):
    response = server.post("embed_image", {"image": {"type": "base64", "value": "%%% not base64 %%%"}})
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"message"}
    assert body["message"].startswith("Could not load input image. Cause: ")
    assert len(body["message"]) > len("Could not load input image. Cause: ")


def test_missing_text_is_422_with_detail(server: Server):
    response = server.post("embed_text", {"api_key": "test"})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail
    assert any("text" in item.get("loc", []) for item in detail), detail


# --- malformed bodies do not hurt the server ---------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [b'{"text": ', b"not json at all", b"\xff\xfe\x00garbage", b""],
    ids=["truncated", "not-json", "binary", "empty"],
)
def test_malformed_json_body_is_rejected_and_server_keeps_answering(server: Server, payload: bytes):
    response = requests.post(
        f"{server.url}/perception_encoder/embed_text",
        data=payload,
        headers={"Content-Type": "application/json"},
        timeout=REQUEST_TIMEOUT,
    )
    assert response.status_code in (400, 422), response.text
    assert "detail" in response.json() or "message" in response.json()

    assert server.process.poll() is None, "the server process died"
    after = server.post("embed_text", {"text": "still alive"})
    _assert_embedding_response(after, 1, T16_DIM)
    assert requests.get(f"{server.url}/health", timeout=10).status_code == 200


# --- Roboflow's documented sample on the default model (last, as its server starts early) ---


def test_roboflow_documented_sample_prints_1024_for_default_model(
    default_server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    cv2 = pytest.importorskip("cv2", reason="the documented sample needs OpenCV: pip install -e '.[dev]'")
    health = requests.get(f"{default_server.url}/health", timeout=10).json()
    assert health["default_model"] == DEFAULT_MODEL

    # The docs download a JPEG first; no network here, so write one with OpenCV instead.
    image_path = str(tmp_path / "dog.jpeg")
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:360, 0:480]
    pixels = np.stack([x * 255 // 479, y * 255 // 359, ((x // 24 + y // 24) % 2) * 180 + 40], axis=-1)
    pixels = np.clip(pixels + rng.integers(-10, 11, pixels.shape), 0, 255).astype(np.uint8)
    assert cv2.imwrite(image_path, pixels)

    URL = default_server.url.replace("127.0.0.1", "localhost")  # the only line changed

    # ---- Roboflow's sample, as documented ----
    image = cv2.imread(image_path)
    _, buffer = cv2.imencode(".jpg", image)
    image_base64 = base64.b64encode(buffer).decode("utf-8")

    response = requests.post(
        f"{URL}/perception_encoder/embed_image",
        json={
            "api_key": os.getenv("API_KEY"),
            "image": {"type": "base64", "value": image_base64},
        },
    )
    result = response.json()
    embedding = result["embeddings"][0]
    print(f"Embedding length: {len(embedding)}")
    print(f"First values: {embedding[:5]}")
    # ---- end of sample ----

    assert response.status_code == 200, response.text
    assert "Embedding length: 1024" in capsys.readouterr().out
    assert len(embedding) == DEFAULT_DIM
    assert len(result["embeddings"]) == 1
    assert all(math.isfinite(v) for v in embedding)
    assert set(result) == EMBED_KEYS


def _established_to(port: int) -> int:
    """TCP connections in ESTABLISHED state to a local port, from /proc/net/tcp{,6}."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def test_sigterm_finishes_in_flight_requests_and_checkpoints(tmp_path: Path) -> None:
    import json
    import signal
    import threading

    server = launch(tmp_path, "PE-Core-T16-384")
    try:
        problem = wait_ready(server, 240)
        assert problem is None, f"{problem}\n{server.log_tail()}"
        for seed in range(3):
            data = encode(photo(100, 80, seed=900 + seed), "PNG")
            assert (
                requests.post(f"{server.url}/images", json={"image": image_object(data)}, timeout=60).status_code == 200
            )
        images = [image_object(encode(photo(200, 150, seed=s), "JPEG")) for s in range(16)]
        result: dict = {}
        in_flight = threading.Thread(
            target=lambda: result.update(response=server.post("embed_image", {"image": images}, timeout=120))
        )
        in_flight.start()
        # 16 images take seconds on this CPU: the signal lands while the request is being served.
        deadline = time.monotonic() + 10
        while not _established_to(server.port) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # the 200 kB body is in; the model works for seconds more
        server.process.send_signal(signal.SIGTERM)
        in_flight.join(timeout=120)
        assert result["response"].status_code == 200 and len(result["response"].json()["embeddings"]) == 16
        # uvicorn shuts down gracefully, then re-raises the signal it caught: -SIGTERM is a clean exit.
        assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)
        assert "Finished server process" in server.log_tail(400)
        pointer = json.loads(next((tmp_path / "data" / "indexes").rglob("CHECKPOINT.json")).read_text())
        assert pointer["id_watermark"] == 3 and pointer["count"] == 3
    finally:
        server.stop()


def test_load_script_runs_clean_against_a_live_server(server: Server) -> None:
    """The bench load mix (embeds, searches, uploads) for a few seconds: no errors."""
    import asyncio

    from bench.load import Load

    load = Load(server.url, clients=3, duration=3.0, max_requests=60)
    asyncio.run(load.run())
    assert sum(len(v) for v in load.latencies.values()) > 0
    assert dict(load.errors) == {}
