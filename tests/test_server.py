"""End-to-end over real HTTP: a real `pe-search serve` (uvicorn) process, driven with `requests`.

Two server processes, each started once per module:

* `server`: PE-Core-T16-384 (dim 512), random weights, for the round trips and errors.
* `default_server`: no model override at all, so it serves the default PE-Core-L14-336
  (dim 1024), random weights; only Roboflow's documented client sample uses it.
"""

from __future__ import annotations

import base64
import contextlib
import math
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.images import encode, image_object, photo

REPO_ROOT = Path(__file__).resolve().parent.parent
T16 = "PE-Core-T16-384"
T16_DIM = 512
DEFAULT_MODEL = "PE-Core-L14-336"
DEFAULT_DIM = 1024
# Bounded waits for /ready: T16 loads in a few seconds, L14 in ~15 s on 2 CPU cores.
READY_DEADLINE = float(os.environ.get("PE_SEARCH_TEST_READY_TIMEOUT", "240"))
REQUEST_TIMEOUT = 60
EMBED_KEYS = {"inference_id", "frame_id", "time", "embeddings"}
COMPARE_KEYS = {"inference_id", "frame_id", "time", "similarity", "parent_id"}
LOG_TAIL_LINES = 200


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_env(data_dir: Path, model: str | None) -> dict[str, str]:
    """The test process's environment minus any model choice, plus random weights and no hub."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PE_SEARCH_") and k != "PERCEPTION_ENCODER_VERSION_ID"
    }
    env.update(
        HF_HUB_OFFLINE="1",
        PE_SEARCH_WEIGHTS="random",
        PE_SEARCH_DEVICE="cpu",
        PE_SEARCH_DATA_DIR=str(data_dir),
        PYTHONUNBUFFERED="1",
    )
    if model is not None:
        env["PE_SEARCH_MODEL"] = model
    return env


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(server log unavailable: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def post(self, route: str, body=None, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", REQUEST_TIMEOUT)
        return requests.post(f"{self.url}/perception_encoder/{route}", json=body, **kwargs)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _launch(workdir: Path, model: str | None, extra_env: dict[str, str] | None = None) -> Server:
    port = _free_port()
    log_path = workdir / f"server-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO_ROOT,  # `-m app.cli` resolves to this checkout
            env={**_server_env(workdir / "data", model), **(extra_env or {})},
            stdin=subprocess.DEVNULL,
            # A file, not a pipe, so a chatty server never blocks; stdout too, for uvicorn's access log.
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Server(process=process, port=port, log_path=log_path)


def _wait_ready(server: Server, deadline_s: float) -> str | None:
    """None once /ready answers 200; otherwise why it never did (exited, failed load, timeout)."""
    deadline = time.monotonic() + deadline_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        code = server.process.poll()
        if code is not None:
            return f"server exited with code {code} before it was ready"
        try:
            response = requests.get(f"{server.url}/ready", timeout=2)
        except requests.RequestException as exc:
            last = f"{type(exc).__name__}"
        else:
            if response.status_code == 200:
                return None
            body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
            if body.get("status") == "failed":
                return f"default model failed to load: {body.get('load_error')}"
            last = f"/ready {response.status_code} {body.get('status')}"
        time.sleep(0.2)
    return f"not ready within {deadline_s:.0f} s (last: {last})"


# Servers launched ahead of the fixture that owns them, so their slow start overlaps other tests.
_prelaunched: dict[str | None, Server] = {}


def _wanted(request: pytest.FixtureRequest, fixture_name: str) -> bool:
    """Whether a test of this module selected for this run uses the fixture."""
    return any(
        getattr(item, "module", None) is request.module and fixture_name in getattr(item, "fixturenames", ())
        for item in request.session.items
    )


def _prelaunch(tmp_path_factory: pytest.TempPathFactory, model: str | None) -> None:
    if model not in _prelaunched:
        _prelaunched[model] = _launch(tmp_path_factory.mktemp("server"), model)


def _stop_prelaunched() -> None:
    while _prelaunched:
        _prelaunched.popitem()[1].stop()


def _start_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, model: str | None):
    server = _prelaunched.pop(model, None)
    for _attempt in range(3):
        if server is None:
            server = _launch(tmp_path_factory.mktemp("server"), model)
        problem = _wait_ready(server, READY_DEADLINE)
        if problem is None:
            break
        server.stop()
        # The port found free may have been taken before uvicorn bound it: try another.
        if "address already in use" not in server.log_tail().lower():
            break
        server = None
    if problem is not None:
        pytest.fail(f"pe-search server did not start: {problem}\n--- server log (stdout and stderr) ---\n{server.log_tail()}", pytrace=False)

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
                    f"\n--- pe-search server log ({model or 'default model'}, port {server.port}), "
                    f"last {LOG_TAIL_LINES} lines ---\n{server.log_tail()}\n--- end of server log ---\n"
                )


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    # Start the default-model server now (it takes the longest) if a selected test needs it.
    if _wanted(request, "default_server"):
        _prelaunch(tmp_path_factory, None)
    try:
        yield from _start_server(request, tmp_path_factory, T16)
    finally:
        _stop_prelaunched()  # never claimed (its test was not reached): do not leak the process


@pytest.fixture(scope="module")
def default_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    yield from _start_server(request, tmp_path_factory, None)


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


def test_same_text_twice_gives_identical_vectors(server: Server):
    body = {"text": "a red bicycle leaning on a wall", "api_key": "test"}
    first = server.post("embed_text", body).json()["embeddings"]
    second = server.post("embed_text", body).json()["embeddings"]
    assert first == second


def test_api_key_in_query_header_or_body_is_accepted(server: Server):
    body = {"text": "a cat"}
    assert server.post("embed_text", body, params={"api_key": "k", "countinference": "false"}).status_code == 200
    assert server.post("embed_text", body, headers={"Authorization": "Bearer k"}).status_code == 200
    assert server.post("embed_text", {**body, "api_key": "k", "unknown_field": 1}).status_code == 200


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

    server = _launch(tmp_path, "PE-Core-T16-384")
    try:
        problem = _wait_ready(server, 240)
        assert problem is None, f"{problem}\n{server.log_tail()}"
        for seed in range(3):
            data = encode(photo(100, 80, seed=900 + seed), "PNG")
            assert requests.post(f"{server.url}/images", json={"image": image_object(data)}, timeout=60).status_code == 200
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
