"""Watched folders: added, changed and deleted files reach the collection; a file being written waits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.ingest.changes import apply_changes
from app.ingest.sources import folder_items
from app.ingest.watch import Settler, watch_folder
from app.ingest.watched_folders import WatchedFolders
from app.model.encoder import PEEncoder
from index.store import VectorStore
from tests.support.images import encode, photo
from tests.support.ingest import ingestor
from tests.support.server import REPO_ROOT, T16, server_env
from tests.support.store import open_store

SETTLE_S = 0.4
WAIT_S = 60


def eventually(check: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def uris(store: VectorStore, collection: str) -> dict[str, int]:
    try:
        info = store.collection(collection)
    except Exception:  # noqa: BLE001 - not created yet
        return {}
    return {r.uri: r.byte_size for batch in store.iter_images(info.id) for r in batch}


class FakeFiles:
    def __init__(self) -> None:
        self.stats: dict[Path, tuple[int, int]] = {}

    def __call__(self, path: Path) -> tuple[int, int] | None:
        return self.stats.get(path)


def test_a_file_is_ready_only_once_it_has_held_still_for_the_settle_time() -> None:
    files, s = FakeFiles(), 10**9
    settler = Settler(1.0, stat=files)
    growing, done = Path("/w/growing.jpg"), Path("/w/done.jpg")
    files.stats = {growing: (100, 10 * s), done: (500, 5 * s)}
    settler.touched(growing)
    settler.touched(done)
    assert not settler.check(now_ns=10 * s)  # first look: both only noted
    files.stats[growing] = (200, 11 * s)  # still being written
    ready = settler.check(now_ns=11 * s)
    assert ready.upserts == [done] and settler.pending() == 1
    assert not settler.check(now_ns=int(11.5 * s))  # unchanged, but written only half a second ago
    assert settler.check(now_ns=12 * s).upserts == [growing]
    settler.touched(growing)
    del files.stats[growing]  # deleted before it settled
    assert settler.check(now_ns=13 * s).deletes == [growing]


def test_watching_adds_changed_and_new_files_and_removes_deleted_ones(tmp_path: Path, encoder: PEEncoder) -> None:
    root = tmp_path / "watched"
    (root / "sub").mkdir(parents=True)
    kept, changed, deleted = root / "kept.jpg", root / "sub" / "changed.png", root / "deleted.webp"
    for i, path in enumerate((kept, changed, deleted)):
        path.write_bytes(encode(photo(200, 150, seed=i), {".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP"}[path.suffix]))
    store = open_store(tmp_path)
    run = ingestor(store, encoder)
    run.run(folder_items(root), collection="w")
    stop = threading.Event()

    ready = threading.Event()

    def loop() -> None:
        for changes in watch_folder(root, stop=stop, settle_s=SETTLE_S, debounce_ms=50, on_ready=ready.set):
            apply_changes(
                run,
                collection="w",
                root=root,
                upserts=changes.upserts,
                deletes=changes.deletes,
                deleted_dirs=changes.deleted_dirs,
            )

    watcher = threading.Thread(target=loop, daemon=True)
    watcher.start()
    try:
        assert ready.wait(WAIT_S)
        added = root / "sub" / "added.jpg"
        added.write_bytes(encode(photo(180, 120, seed=7), "JPEG"))
        changed.write_bytes(encode(photo(260, 190, seed=8), "PNG"))
        deleted.unlink()
        (root / "notes.txt").write_text("not an image: never looked at")
        expected = {str(p.resolve()) for p in (kept, changed, added)}
        eventually(lambda: set(uris(store, "w")) == expected, "the three changes")
        assert uris(store, "w")[str(changed.resolve())] == changed.stat().st_size  # the new content

        # A file written in pieces, each sooner than the settle time: read once, whole.
        slow = root / "slow.jpg"
        data = encode(photo(640, 480, seed=9), "JPEG", quality=95)
        with open(slow, "wb") as handle:
            for start in range(0, len(data), len(data) // 4 + 1):
                handle.write(data[start : start + len(data) // 4 + 1])
                handle.flush()
                time.sleep(SETTLE_S / 4)
        eventually(lambda: str(slow.resolve()) in uris(store, "w"), "the slowly written file")
        assert uris(store, "w")[str(slow.resolve())] == len(data)
        assert store.failures(store.collection("w").id) == []  # never read half-written

        # A folder moved in arrives as one event for the folder; so does one moved out.
        album = tmp_path / "album"
        (album / "inner").mkdir(parents=True)
        for i, name in enumerate(("one.jpg", "inner/two.png")):
            (album / name).write_bytes(encode(photo(190, 140, seed=40 + i), "PNG" if name.endswith("png") else "JPEG"))
        moved_in = root / "album"
        os.rename(album, moved_in)
        album_uris = {str((moved_in / n).resolve()) for n in ("one.jpg", "inner/two.png")}
        eventually(lambda: album_uris <= set(uris(store, "w")), "the folder moved in")
        os.rename(moved_in, tmp_path / "album-out")
        eventually(lambda: not album_uris & set(uris(store, "w")), "the folder moved out")
        assert set(uris(store, "w")) == expected | {str(slow.resolve())}
    finally:
        stop.set()
        watcher.join(timeout=30)
    assert not watcher.is_alive()


def test_a_sync_never_empties_a_collection_from_a_folder_that_looks_unmounted(tmp_path: Path, encoder) -> None:
    from app.errors import SourceError
    from app.ingest.changes import sync_folder

    root = tmp_path / "share"
    root.mkdir()
    for i in range(3):
        (root / f"{i}.jpg").write_bytes(encode(photo(160, 120, seed=50 + i), "JPEG"))
    store = open_store(tmp_path)
    run = ingestor(store, encoder)
    assert sync_folder(run, collection="s", root=root).added == 3
    (root / "0.jpg").unlink()
    assert sync_folder(run, collection="s", root=root).removed == 1  # one file gone: its image goes
    for path in root.iterdir():
        path.rename(tmp_path / path.name)  # everything gone at once, as an unmounted share looks
    with pytest.raises(SourceError, match="not removing them"):
        sync_folder(run, collection="s", root=root)
    assert len(uris(store, "s")) == 2


def test_the_servers_watched_folder_syncs_at_start_and_follows_changes(
    client: TestClient, tmp_path: Path, encoder: PEEncoder
) -> None:
    root = tmp_path / "served"
    root.mkdir()
    first, gone = root / "first.jpg", root / "gone.jpg"
    first.write_bytes(encode(photo(200, 150, seed=20), "JPEG"))
    gone.write_bytes(encode(photo(200, 150, seed=21), "JPEG"))
    services = client.app.state.services
    store: VectorStore = services.store
    run = ingestor(store, encoder)
    run.run(folder_items(root), collection="served-watch")
    gone.unlink()  # deleted while nothing watched: the start-up sync removes it
    watched = WatchedFolders(folders=(("served-watch", root),), jobs=services.jobs, settle_s=SETTLE_S)
    watched.start()
    try:
        assert services.jobs.wait_idle(WAIT_S)
        assert set(uris(store, "served-watch")) == {str(first.resolve())}
        assert watched.wait_ready(WAIT_S)
        later = root / "later.png"
        later.write_bytes(encode(photo(210, 160, seed=22), "PNG"))
        eventually(lambda: str(later.resolve()) in uris(store, "served-watch"), "the added file")
        jobs = [job for job in services.jobs.recent(10) if job.collection == "served-watch"]
        assert {job.kind for job in jobs} == {"folder", "changes"}
        assert any(job.summary.get("removed") == 1 for job in jobs if job.kind == "folder")
    finally:
        watched.close()
        services.jobs.wait_idle(WAIT_S)
        client.delete("/collections/served-watch")


@pytest.mark.slow
def test_the_cli_watch_runs_until_sigterm(tmp_path: Path) -> None:
    root = tmp_path / "cli-watched"
    root.mkdir()
    (root / "a.jpg").write_bytes(encode(photo(200, 150, seed=30), "JPEG"))
    env = {**server_env(tmp_path / "data", T16), "PE_SEARCH_INGEST_BATCH": "2"}
    command = [sys.executable, "-m", "app.cli", "ingest", str(root), "--watch", "--settle", str(SETTLE_S)]
    process = subprocess.Popen(
        [*command, "--collection", "cli", "--quiet"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None and process.stdout is not None
        while "watching" not in (line := process.stderr.readline()):
            assert line, f"the watch ended early: {process.stderr.read()}"
        first = process.stdout.readline()
        assert first.startswith("1 added"), first
        (root / "b.png").write_bytes(encode(photo(220, 160, seed=31), "PNG"))
        line = process.stdout.readline()
        assert line.startswith("1 added"), line
        (root / "a.jpg").unlink()
        line = process.stdout.readline()
        assert "1 removed" in line, line
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    store = open_store(tmp_path / "check", f"sqlite:///{tmp_path / 'data' / 'pe-search.db'}")
    assert set(uris(store, "cli")) == {str((root / "b.png").resolve())}
