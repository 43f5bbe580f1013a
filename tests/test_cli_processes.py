"""The CLI as users run it, whole processes: what each command loads, and search sent to a running server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.constants import TEST_MODEL
from tests.support.images import photo
from tests.support.server import READY_DEADLINE, REPO_ROOT, launch, server_env, wait_ready

# Runs the CLI in a child process, then reports whether torch or open_clip were ever imported there.
_PROBE = (
    "import json, sys\n"
    "from app.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print(json.dumps({'code': code, 'torch': 'torch' in sys.modules, 'open_clip': 'open_clip' in sys.modules}),"
    " file=sys.stderr)\n"
)


def cli(env: dict[str, str], *argv: str) -> tuple[dict, str]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=300,
    )
    status = json.loads(done.stderr.strip().splitlines()[-1])
    assert status["code"] == 0, done.stderr
    return status, done.stdout


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A data dir with a small ingested folder, and the environment the CLI runs with."""
    root = tmp_path_factory.mktemp("cli-processes")
    folder = root / "photos"
    folder.mkdir()
    for seed in range(5):
        photo(240 + 10 * seed, 180, seed=seed).save(folder / f"p{seed}.jpg", quality=90)
    env = server_env(root / "data", TEST_MODEL)
    cli(env, "ingest", str(folder), "--quiet")
    return folder, env


def test_store_commands_a_no_op_ingest_and_a_text_search_never_import_torch(library: tuple[Path, dict]) -> None:
    """The fixed costs out of the CLI: only what a command needs is imported and loaded."""
    folder, env = library
    for argv in (["stats"], ["collections"], ["ingest", str(folder), "--quiet"], ["search", "a cat", "--json"]):
        status, _ = cli(env, *argv)
        assert (status["torch"], status["open_clip"]) == (False, False), argv


def test_search_sent_to_a_running_server_answers_as_the_local_search(
    library: tuple[Path, dict], tmp_path: Path
) -> None:
    _, env = library
    _, local = cli(env, "search", "a photo of a dog", "-k", "3", "--json")
    server = launch(tmp_path, TEST_MODEL, {"PE_SEARCH_DATA_DIR": env["PE_SEARCH_DATA_DIR"]})
    try:
        assert wait_ready(server, READY_DEADLINE) is None, server.log_tail()
        # No local store here: an answer can only come from the server.
        elsewhere = {**env, "PE_SEARCH_DATA_DIR": str(tmp_path / "no-store-here")}
        status, remote = cli(elsewhere, "search", "a photo of a dog", "-k", "3", "--json", "--server", server.url)
        assert (status["torch"], status["open_clip"]) == (False, False)
        _, by_url = cli({**elsewhere, "PE_SEARCH_URL": server.url}, "search", "a photo of a dog", "-k", "3", "--json")
    finally:
        server.stop()
    local_rows, remote_rows = json.loads(local), json.loads(remote)
    assert len(local_rows) == 3
    assert [r["id"] for r in remote_rows] == [r["id"] for r in local_rows]
    assert [r["score"] for r in remote_rows] == pytest.approx([r["score"] for r in local_rows], abs=1e-4)
    assert json.loads(by_url) == remote_rows  # PE_SEARCH_URL does what --server does
