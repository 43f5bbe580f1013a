"""A real `pe-search serve` (uvicorn) process on 127.0.0.1, launched from this checkout with random weights."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.support.constants import TEST_DIM, TEST_MODEL

REPO_ROOT = Path(__file__).resolve().parents[2]
T16 = TEST_MODEL
T16_DIM = TEST_DIM
# Bounded waits for /ready: T16 loads in a few seconds, L14 in ~15 s on 2 CPU cores.
READY_DEADLINE = float(os.environ.get("PE_SEARCH_TEST_READY_TIMEOUT", "240"))
REQUEST_TIMEOUT = 60
LOG_TAIL_LINES = 200


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(data_dir: Path, model: str | None) -> dict[str, str]:
    """The test process's environment minus any model choice, plus random weights and no hub."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("PE_SEARCH_") and k != "PERCEPTION_ENCODER_VERSION_ID"
    }
    env.update(
        HF_HUB_OFFLINE="1",
        PE_SEARCH_WEIGHTS="random",
        PE_SEARCH_EXPORT_DIR=os.environ.get("PE_SEARCH_EXPORT_DIR", str(data_dir.parent / "exports")),
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
        stop_process(self.process)


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM (a graceful stop, as Docker and systemd send), then SIGKILL after 20 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def launch(workdir: Path, model: str | None, extra_env: dict[str, str] | None = None) -> Server:
    """Start `pe-search serve` on a free loopback port; its data under workdir/data, its log in workdir."""
    port = free_port()
    log_path = workdir / f"server-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO_ROOT,  # `-m app.cli` resolves to this checkout
            env={**server_env(workdir / "data", model), **(extra_env or {})},
            stdin=subprocess.DEVNULL,
            # A file, not a pipe, so a chatty server never blocks; stdout too, for uvicorn's access log.
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Server(process=process, port=port, log_path=log_path)


def wait_ready(server: Server, deadline_s: float) -> str | None:
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


def wanted(request: pytest.FixtureRequest, fixture_name: str) -> bool:
    """Whether a test of this module selected for this run uses the fixture."""
    return any(
        getattr(item, "module", None) is request.module and fixture_name in getattr(item, "fixturenames", ())
        for item in request.session.items
    )
