"""A real `pe-search ingest` process killed with SIGKILL mid-run, then run again."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from index.db import create_db_engine
from index.store import VectorStore
from tests.support.images import encode, photo

COUNT = 40
BATCH = 4
# Real processes killed mid-run, and runs again.
pytestmark = pytest.mark.slow


def cli_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PE_SEARCH_")}
    env.update(
        PE_SEARCH_DATA_DIR=str(data_dir),
        PE_SEARCH_WEIGHTS="random",
        PE_SEARCH_MODEL="PE-Core-T16-384",
        PE_SEARCH_DEVICE="cpu",
        HF_HUB_OFFLINE="1",
    )
    return env


def committed(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as connection:
            return connection.execute("SELECT count(*) FROM images").fetchone()[0]
    except sqlite3.OperationalError:
        return 0  # tables not migrated yet


def test_sigkill_mid_ingest_loses_nothing_committed(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(COUNT):
        (folder / f"p{i:03}.jpg").write_bytes(encode(photo(160, 120, seed=2000 + i), "JPEG"))
    data_dir = tmp_path / "data"
    command = [
        sys.executable,
        "-m",
        "app.cli",
        "ingest",
        str(folder),
        "--collection",
        "crash",
        "--batch-size",
        str(BATCH),
        "--quiet",
        "--json",
    ]
    process = subprocess.Popen(command, env=cli_env(data_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    db = data_dir / "pe-search.db"
    deadline = time.monotonic() + 180
    while committed(db) < 2 * BATCH:
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the ingest never committed two batches"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    at_kill = committed(db)
    assert 2 * BATCH <= at_kill < COUNT, "the process must die mid-ingest for this test to mean anything"
    assert at_kill % BATCH == 0, "a batch is committed whole or not at all"

    rerun = subprocess.run(command, env=cli_env(data_dir), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads(rerun.stdout)
    assert summary["added"] + summary["unchanged"] == COUNT
    assert summary["unchanged"] >= at_kill and summary["failed"] == 0 and summary["duplicates"] == 0

    with sqlite3.connect(db) as connection:
        assert connection.execute("SELECT count(*), count(DISTINCT sha256) FROM images").fetchone() == (COUNT, COUNT)
        assert connection.execute("SELECT count(*) FROM sources").fetchone()[0] == COUNT
    store = VectorStore(engine=create_db_engine(f"sqlite:///{db}"), index_dir=data_dir / "indexes").open()
    info = store.collection("crash")
    assert info.count == COUNT and info.indexed == COUNT
    for image_id in store.images(list(range(1, COUNT * 3))):
        _, vector = store.vector(image_id)
        top = store.search(info.id, vector, 1)[0]
        assert top.id == image_id and np.isclose(top.score, 1.0, atol=1e-4)


def test_sigkill_during_index_checkpoints_never_corrupts(tmp_path: Path) -> None:
    """Kill a process that does little but write checkpoints (~10 MB each), three times, at
    different moments: each time the store opens consistent, every committed row indexed."""
    for round_number, lines_before_kill in enumerate((3, 6, 10)):
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.checkpoint_loop", str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(lines_before_kill):
            line = process.stdout.readline()
            assert line, process.stderr.read()[-2000:]
        # Land the kill inside the next save, not between saves: a little after a line.
        time.sleep(0.01 * (round_number + 1))
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        store = VectorStore(
            engine=create_db_engine(f"sqlite:///{tmp_path / 'meta.db'}"), index_dir=tmp_path / "indexes"
        ).open()
        info = store.collection("loop")
        assert info.indexed == info.count > 0
        _, vector = store.vector(info.count)  # the newest committed row
        assert store.search(info.id, vector, 1)[0].id == info.count
        store.engine.dispose()
