"""The Dockerfile: linted, and the commands its steps run, run here (no Docker engine on this host)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == "", result.stdout


def test_conventions_operators_expect() -> None:
    assert re.search(r"^USER 10001$", DOCKERFILE, re.M), "runs as a non-root numeric user"
    assert 'VOLUME ["/data"]' in DOCKERFILE and "EXPOSE 9001" in DOCKERFILE
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in DOCKERFILE  # CPU by default, CUDA by arg
    assert "ARG BAKE_MODEL" in DOCKERFILE and "pe-search download" in DOCKERFILE
    for path in ("app", "index", "migrations"):
        assert f"COPY {path} ./{path}" in DOCKERFILE, f"the image needs {path}/"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "data", "tests"} <= set(ignored)


def _copied_context(destination: Path) -> None:
    """The build context as the Dockerfile's COPY steps lay it out in WORKDIR."""
    for line in re.findall(r"^COPY (.+)$", DOCKERFILE, re.M):
        *sources, target = line.split()
        for source in sources:
            path = ROOT / source
            if path.is_dir():
                shutil.copytree(path, destination / target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(path, destination / target)


@pytest.mark.parametrize("extras", ["", "postgres,s3", "objects"])
def test_install_step_installs_the_extras_asked_for(extras: str, tmp_path: Path) -> None:
    """The step's own shell words, run by sh with the EXTRAS build argument, ask pip for pe-search[EXTRAS]."""
    assert 'ARG EXTRAS=""' in DOCKERFILE  # none by default
    [spec] = re.findall(r"^RUN pip install (\S+) \\$", DOCKERFILE, re.M)
    _copied_context(tmp_path)
    report = tmp_path / "report.json"
    # --dry-run --no-deps: pip builds the project's metadata and resolves the extras, installs nothing.
    step = f'exec "$PYTHON" -m pip install --dry-run --no-deps --no-build-isolation --quiet --report "$REPORT" {spec}'
    env = {**os.environ, "EXTRAS": extras, "PYTHON": sys.executable, "REPORT": str(report)}
    result = subprocess.run(["sh", "-c", step], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    [install] = json.loads(report.read_text())["install"]
    metadata = install["metadata"]
    assert metadata["name"] == "pe-search"
    asked = extras.split(",") if extras else []
    assert (install.get("requested_extras") or []) == asked
    assert set(asked) <= set(metadata["provides_extra"]), "an extra pyproject.toml does not define"
    assert "does not provide the extra" not in result.stderr


def _healthcheck_command() -> list[str]:
    line = next(row for row in DOCKERFILE.splitlines() if row.strip().startswith('CMD ["python"'))
    return json.loads(line.strip()[len("CMD ") :])


@pytest.mark.parametrize("status,healthy", [(200, True), (503, False)])
def test_healthcheck_command_follows_ready(status: int, healthy: bool) -> None:
    class Ready(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(status if self.path == "/ready" else 404)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Ready)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        command = [sys.executable if part == "python" else part for part in _healthcheck_command()]
        env = {**os.environ, "PE_SEARCH_PORT": str(httpd.server_address[1])}
        assert (subprocess.run(command, env=env, capture_output=True).returncode == 0) is healthy
    finally:
        httpd.shutdown()


def test_download_step_fills_the_cache_or_says_why(tmp_path: Path, capsys, monkeypatch) -> None:
    from safetensors.torch import save_file

    from app.cli import main
    from app.model.variants import get_variant

    variant = get_variant("PE-Core-T16-384")
    monkeypatch.setenv("PE_SEARCH_CACHE_DIR", str(tmp_path / "empty"))
    code = main(["download", "--model", variant.version_id])
    assert code == 2 and "PE_SEARCH_WEIGHTS" in capsys.readouterr().err  # offline, nothing cached
    snapshot = tmp_path / f"models--{variant.hub_repo.replace('/', '--')}" / "snapshots" / ("b" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("b" * 40)
    import torch

    save_file({"x": torch.zeros(1)}, snapshot / "open_clip_model.safetensors")
    monkeypatch.setenv("PE_SEARCH_CACHE_DIR", str(tmp_path))
    code = main(["download", "--no-export", "--model", variant.version_id])
    assert code == 0 and capsys.readouterr().out.strip().endswith("open_clip_model.safetensors")
