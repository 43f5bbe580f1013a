"""`pe-search backup` / `restore` on real stores: a backup taken while a writer commits restores to exactly
the state at its watermark; a damaged backup or an occupied target is refused before anything is written.

The stores are real (SQLite files or a PostgreSQL server on loopback, FAISS checkpoints); only the vectors
are synthetic, so no model loads.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from app.errors import BackupError, DamagedBackupError
from app.media.uploads import UploadFiles
from app.services import backup as backup_module
from app.services import backup_postgres, backup_restore
from app.services.backup import backup, restore
from app.services.backup_manifest import MANIFEST, SQLITE_FILE
from app.services.storage import open_store
from app.settings import Settings
from index import vector_rows
from index.store import VectorStore
from tests.support import pg
from tests.support.store import DIM, MODEL, add, unit

BATCH = 40
WAIT_S = 120  # upper bound on waiting for the writer thread; never reached when things work


def settings_for(root: Path, url: str | None = None) -> Settings:
    return Settings(data_dir=root, database_url=url)


def tree(root: Path) -> dict[str, str]:
    """Every file under root with the sha256 of its bytes: what 'untouched' means."""
    if not root.exists():
        return {}
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def random_units(rng: np.random.Generator, n: int) -> np.ndarray:
    return unit(rng.normal(size=(n, DIM)))


def filled(settings: Settings, n: int = 120, *, seed: int = 0, name: str = "photos") -> tuple[VectorStore, int]:
    """A store with n rows, checkpointed, then a few more rows above the checkpoint."""
    store = open_store(settings)
    collection = store.create_collection(name, model=MODEL, dim=DIM)
    rng = np.random.default_rng(seed)
    add(store, collection.id, random_units(rng, n))
    store.checkpoint()
    add(store, collection.id, random_units(rng, 7), start=n)
    return store, collection.id


class Writer(threading.Thread):
    """Commits batches of random rows through the store, checkpointing every third, until told to stop."""

    def __init__(self, store: VectorStore, collection_id: int, start: int) -> None:
        super().__init__(daemon=True)
        self.store, self.collection_id, self.next = store, collection_id, start
        self.batches = 0
        self.changed = threading.Condition()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        rng = np.random.default_rng(7)
        try:
            while not self.stop.is_set():
                add(self.store, self.collection_id, random_units(rng, BATCH), start=self.next)
                self.next += BATCH
                if self.batches % 3 == 2:
                    self.store.checkpoint()
                with self.changed:
                    self.batches += 1
                    self.changed.notify_all()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test
            self.error = exc
            with self.changed:
                self.changed.notify_all()

    def wait_for(self, more: int) -> None:
        """Block until `more` further batches have committed."""
        with self.changed:
            target = self.batches + more
            assert self.changed.wait_for(lambda: self.batches >= target or self.error, timeout=WAIT_S)
        assert self.error is None, self.error


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def urls(request: pytest.FixtureRequest) -> Iterator[tuple[str | None, str | None]]:
    """(source, target) database URLs: SQLite files in the data dirs, or two databases of a real server."""
    if request.param == "sqlite":
        yield None, None
        return
    server = request.getfixturevalue("postgres_server")
    _put_pg_tools_on_path(request.getfixturevalue("monkeypatch"))
    target = server.create_database()
    yield request.getfixturevalue("postgres_url"), server.url(target)
    server.drop_database(target)


def _put_pg_tools_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = pg.find_bin_dir()
    if bin_dir is None or not all((bin_dir / tool).exists() for tool in ("pg_dump", "pg_restore")):
        pg.unavailable("pg_dump and pg_restore not found beside the PostgreSQL server binaries")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")


def test_a_backup_taken_during_an_ingest_restores_the_state_at_its_watermark(
    tmp_path: Path, urls: tuple[str | None, str | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    source_url, target_url = urls
    settings = settings_for(tmp_path / "data", source_url)
    store, cid = filled(settings, 200)
    writer = Writer(store, cid, start=1000)
    copy_checkpoints = backup_module._copy_checkpoints

    def then_more_commits(*args: object) -> object:
        # Rows committed between the checkpoint copy and the database snapshot: the restore must catch them up.
        copied = copy_checkpoints(*args)
        writer.wait_for(2)
        return copied

    monkeypatch.setattr(backup_module, "_copy_checkpoints", then_more_commits)
    writer.start()
    try:
        writer.wait_for(2)
        summary = backup(settings, tmp_path / "backup")
        writer.wait_for(2)  # and the writer carried on after the snapshot
    finally:
        writer.stop.set()
        writer.join(WAIT_S)
    assert writer.error is None, writer.error

    [entry] = summary.manifest.collections
    watermark = entry.max_image_id
    assert entry.checkpoint is not None and entry.checkpoint["id_watermark"] < watermark
    assert store.id_watermark(cid) > watermark  # commits after the snapshot are not in the backup
    with store.sessions() as session:
        chunks = list(vector_rows.iter_vectors(session, collection_id=cid, up_to=watermark))
    ids = np.concatenate([c[0] for c in chunks])
    vectors = np.concatenate([c[1] for c in chunks])
    assert entry.images == len(ids)
    store.close()

    restored_settings = settings_for(tmp_path / "restored", target_url)
    result = restore(restored_settings, tmp_path / "backup")
    assert result.manifest.collections[0].max_image_id == watermark
    restored = open_store(restored_settings)
    try:
        live = restored.live.get(cid)
        assert live is not None
        # Loaded from the copied checkpoint (a rebuild has no file) and caught up from the database above it.
        assert live.checkpoint.file == entry.checkpoint["file"]
        assert live.checkpoint.id_watermark == watermark and live.index.count == len(ids)
        for query in random_units(np.random.default_rng(3), 5):
            hits = restored.search(cid, query, 10)
            scores = vectors @ query
            best = np.argsort(-scores, kind="stable")[:10]
            assert [h.id for h in hits] == ids[best].tolist()
            np.testing.assert_allclose([h.score for h in hits], scores[best], atol=1e-5)
    finally:
        restored.close(checkpoint=False)


def test_uploads_round_trip_and_files_being_written_are_left_out(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "data")
    store, _ = filled(settings, 20)
    store.close()
    uploads = UploadFiles(settings.uploads_dir)
    blobs = [os.urandom(3000 + i) for i in range(5)]
    for blob in blobs:
        uploads.save(blob, hashlib.sha256(blob).hexdigest())
    (settings.uploads_dir / "ab").mkdir(exist_ok=True)
    (settings.uploads_dir / "ab" / ".abc.tmp").write_bytes(b"half an upload")

    summary = backup(settings, tmp_path / "backup")
    assert len([f for f in summary.manifest.files if f.path.startswith("uploads/")]) == len(blobs)
    restore(settings_for(tmp_path / "restored"), tmp_path / "backup")

    restored = UploadFiles(tmp_path / "restored" / "uploads")
    for blob in blobs:
        assert restored.path(hashlib.sha256(blob).hexdigest()).read_bytes() == blob
    assert not (tmp_path / "restored" / "uploads" / "ab" / ".abc.tmp").exists()
    assert not (tmp_path / "restored" / ".pe-search-restore").exists()


def test_backup_refuses_a_dest_that_is_not_empty(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "data")
    filled(settings, 10)[0].close()
    dest = tmp_path / "backup"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    with pytest.raises(BackupError, match="not an empty folder"):
        backup(settings, dest)
    assert tree(dest) == {"notes.txt": hashlib.sha256(b"mine").hexdigest()}
    (dest / "notes.txt").unlink()
    backup(settings, dest)  # an empty folder is fine
    assert (dest / MANIFEST).is_file()


@pytest.fixture()
def a_backup(tmp_path: Path) -> Path:
    settings = settings_for(tmp_path / "data")
    store, _ = filled(settings, 60)
    store.close()
    blob = b"an uploaded image"
    UploadFiles(settings.uploads_dir).save(blob, hashlib.sha256(blob).hexdigest())
    backup(settings, tmp_path / "backup")
    return tmp_path / "backup"


def _rewrite_manifest_entry(root: Path, path: str) -> None:
    """Make the manifest agree with the file again, so that only the database's own check can object."""
    manifest = json.loads((root / MANIFEST).read_text())
    data = (root / path).read_bytes()
    for entry in manifest["files"]:
        if entry["path"] == path:
            entry.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    (root / MANIFEST).write_text(json.dumps(manifest))


def _flip_a_byte(root: Path) -> None:
    data = bytearray((root / SQLITE_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (root / SQLITE_FILE).write_bytes(bytes(data))


def _corrupt_a_table_page(root: Path) -> None:
    path = root / SQLITE_FILE
    with sqlite3.connect(path) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        page = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'images'").fetchone()[0]
    db.close()
    data = bytearray(path.read_bytes())
    data[(page - 1) * page_size + 3 : (page - 1) * page_size + 5] = b"\xff\xff"  # the page's cell count
    path.write_bytes(bytes(data))
    _rewrite_manifest_entry(root, SQLITE_FILE)


def _truncate_the_index(root: Path) -> None:
    [index] = root.glob("indexes/*/index-*.faiss")
    index.write_bytes(index.read_bytes()[:-100])


def _remove_an_upload(root: Path) -> None:
    [upload] = [p for p in (root / "uploads").rglob("*") if p.is_file()]
    upload.unlink()


def _garble_the_manifest(root: Path) -> None:
    text = (root / MANIFEST).read_text()
    (root / MANIFEST).write_text(text[: len(text) // 2])


@pytest.mark.parametrize(
    ("damage", "names"),
    [
        (_flip_a_byte, "pe-search.db: contents differ"),
        (_corrupt_a_table_page, "pe-search.db: fails SQLite's integrity check"),
        (_truncate_the_index, r"indexes/\d+/index-\d+\.faiss: \d+ bytes, the manifest says"),
        (_remove_an_upload, "uploads/.*: missing"),
        (_garble_the_manifest, "MANIFEST.json: not readable JSON"),
        (lambda root: (root / MANIFEST).unlink(), "MANIFEST.json: missing"),
    ],
    ids=["flipped-db-byte", "db-integrity", "truncated-index", "missing-upload", "garbled-manifest", "no-manifest"],
)
def test_a_damaged_backup_is_refused_and_nothing_is_written(
    a_backup: Path, tmp_path: Path, damage: object, names: str
) -> None:
    damage(a_backup)
    absent, empty = tmp_path / "absent", tmp_path / "empty"
    empty.mkdir()
    for target in (absent, empty):
        with pytest.raises(DamagedBackupError, match=names):
            restore(settings_for(target), a_backup)
    assert not absent.exists()
    assert list(empty.iterdir()) == []


def test_restore_refuses_a_data_dir_in_use_unless_forced(a_backup: Path, tmp_path: Path) -> None:
    target = settings_for(tmp_path / "target")
    other, _ = filled(target, 15, seed=5, name="other")
    other.close()
    UploadFiles(target.uploads_dir).save(b"theirs", hashlib.sha256(b"theirs").hexdigest())
    before = tree(target.data_dir)
    with pytest.raises(BackupError, match="is not empty.*--force"):
        restore(target, a_backup)
    assert tree(target.data_dir) == before

    # What an interrupted restore leaves behind does not stand in the way of the next one.
    (target.data_dir / ".pe-search-restore" / "new" / "uploads").mkdir(parents=True)
    (target.data_dir / "pe-search.db.restore").write_bytes(b"half a database")
    summary = restore(target, a_backup, force=True)
    assert summary.replaced
    store = open_store(target)
    try:
        assert [c.name for c in store.collections()] == ["photos"]
        assert store.collections()[0].count == summary.manifest.collections[0].images == 67
    finally:
        store.close(checkpoint=False)
    assert not UploadFiles(target.uploads_dir).path(hashlib.sha256(b"theirs").hexdigest()).exists()
    assert sorted(p.name for p in target.data_dir.iterdir()) == ["indexes", "pe-search.db", "uploads"]


def test_a_forced_restore_that_fails_midway_puts_the_old_data_dir_back(
    a_backup: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = settings_for(tmp_path / "target")
    other, _ = filled(target, 15, seed=5, name="other")
    other.close()
    UploadFiles(target.uploads_dir).save(b"theirs", hashlib.sha256(b"theirs").hexdigest())
    before = tree(target.data_dir)
    real_replace = os.replace

    def failing_replace(source: Path, destination: Path) -> None:
        if Path(destination) == target.data_dir / SQLITE_FILE and Path(source).name.endswith(".restore"):
            raise OSError(28, "No space left on device")
        real_replace(source, destination)

    monkeypatch.setattr(backup_restore.os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        restore(target, a_backup, force=True)
    monkeypatch.undo()
    assert tree(target.data_dir) == before
    store = open_store(target)
    try:
        assert [c.name for c in store.collections()] == ["other"]
    finally:
        store.close(checkpoint=False)


def test_cli_backup_and_restore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.delenv("PE_SEARCH_DATABASE_URL", raising=False)
    data, dest, restored = tmp_path / "data", tmp_path / "backup", tmp_path / "restored"
    filled(settings_for(data), 30)[0].close()
    monkeypatch.setenv("PE_SEARCH_DATA_DIR", str(data))

    assert main(["backup", str(dest)]) == 0
    assert "backed up 1 collection ('photos' 37 images up to id 37)" in capsys.readouterr().out
    assert main(["backup", str(dest)]) == 2
    assert "is not an empty folder" in capsys.readouterr().err

    monkeypatch.setenv("PE_SEARCH_DATA_DIR", str(restored))
    assert main(["restore", str(dest), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 37 and report["collections"][0]["max_image_id"] == 37
    assert report["replaced"] is False
    assert main(["restore", str(dest)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["restore", str(dest), "--force"]) == 0
    assert "restored 1 collection" in capsys.readouterr().out

    (dest / MANIFEST).write_text("{")
    assert main(["restore", str(dest), "--force"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pe-search: damaged backup: MANIFEST.json") and err.count("\n") == 1


def test_postgres_backup_without_pg_dump_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))
    settings = settings_for(tmp_path / "data", "postgresql+psycopg://pe:secret@127.0.0.1:1/pesearch")
    with pytest.raises(BackupError, match="pg_dump is not on PATH.*apt-get install postgresql-client"):
        backup(settings, tmp_path / "backup")
    assert not (tmp_path / "backup").exists()


@pytest.mark.postgres
def test_postgres_restore_refuses_a_database_in_use_and_passes_no_password_on_a_command_line(
    tmp_path: Path, postgres_server: pg.PostgresServer, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _put_pg_tools_on_path(monkeypatch)
    commands: list[tuple[list[str], dict[str, str]]] = []
    real_run = subprocess.run

    def recording_run(command: list[str], **kwargs: object) -> object:
        commands.append((command, dict(kwargs.get("env") or {})))
        return real_run(command, **kwargs)

    monkeypatch.setattr(backup_postgres.subprocess, "run", recording_run)
    settings = settings_for(tmp_path / "data", postgres_url)
    filled(settings, 25)[0].close()
    backup(settings, tmp_path / "backup")
    target = settings_for(tmp_path / "restored", postgres_url)  # the same database: it has tables
    with pytest.raises(BackupError, match="has tables.*--force"):
        restore(target, tmp_path / "backup")
    assert not target.data_dir.exists()
    restore(target, tmp_path / "backup", force=True)
    store = open_store(target)
    try:
        assert store.collections()[0].count == 32
    finally:
        store.close(checkpoint=False)

    tools = {Path(command[0]).name for command, _ in commands}
    assert {"pg_dump", "pg_restore"} <= tools
    for command, env in commands:
        assert postgres_server.password not in " ".join(command)
        if "--list" not in command:
            assert env["PGPASSWORD"] == postgres_server.password

    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))
    with pytest.raises(BackupError, match="pg_restore is not on PATH"):
        restore(settings_for(tmp_path / "again", postgres_url), tmp_path / "backup", force=True)
    assert not (tmp_path / "again").exists()
