"""`pe-search backup` and `restore`: a consistent copy of a live data dir and database, and putting one back.

Consistency comes from the order, not from stopping writers. Index checkpoints are copied first, then the
database as one snapshot, so the snapshot holds every row and tombstone each copied checkpoint covers, and
more: the restored store's live index replays the rows above its checkpoint's watermark from the database,
exactly as after a crash. Uploads go last: an upload's file is written before its row commits, so every
upload the snapshot names is already on disk by then.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import sqlite3
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, create_engine, func, select, text

from app import __version__
from app.errors import BackupError
from app.services import backup_postgres as pg
from app.services.backup_manifest import (
    INDEXES,
    POSTGRES_DUMP,
    SQLITE_FILE,
    UPLOADS,
    CollectionEntry,
    FileEntry,
    Manifest,
    Summary,
    checkpoint_files,
    copy_file,
    copy_stream,
    hash_file,
    sqlite_path,
    write_manifest,
)
from app.services.backup_restore import restore
from app.settings import Settings
from index.ann import checkpoint as ckpt
from index.models import Collection, Image, Tombstone

__all__ = ["backup", "restore"]
log = logging.getLogger(__name__)


def backup(settings: Settings, dest: Path) -> Summary:
    """Copy the data dir's checkpoints, database and uploads into DEST (new or empty), MANIFEST.json last."""
    started = time.monotonic()
    postgres = pg.is_postgres(settings.db_url)
    pg_dump = pg.find_tool("pg_dump") if postgres else None  # refused before DEST is touched
    source_db = None if postgres else sqlite_path(settings.db_url)
    if source_db is not None and not source_db.is_file():
        raise BackupError(f"there is no database at {source_db} to back up (is PE_SEARCH_DATA_DIR right?)")
    created = _prepare_dest(dest, settings)
    try:
        marks, files = _copy_checkpoints(settings.index_dir, dest)
        if pg_dump is not None:
            with pg.exported_snapshot(settings.db_url) as (connection, snapshot):
                revision, collections = _facts(connection)
                pg.dump(pg_dump, settings.db_url, snapshot, dest / POSTGRES_DUMP)
            files.append(_hashed(dest / POSTGRES_DUMP, dest))
        else:
            assert source_db is not None
            revision, collections = _copy_sqlite(source_db, dest / SQLITE_FILE)
            files.append(_hashed(dest / SQLITE_FILE, dest))
        files = _attach_checkpoints(dest, collections, marks, files)
        files += _copy_uploads(settings.uploads_dir, dest)
        manifest = Manifest(
            pe_search_version=__version__,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            database="postgresql" if postgres else "sqlite",
            alembic_revision=revision,
            collections=collections,
            files=files,
        )
        write_manifest(dest, manifest)
    except BaseException:
        _clear(dest, remove_folder=created)
        raise
    return Summary("backup", dest, settings.data_dir, manifest, time.monotonic() - started)


def _prepare_dest(dest: Path, settings: Settings) -> bool:
    """Make DEST ready; True if it was created here (and is removed again if the backup fails)."""
    resolved = dest.resolve()
    for inner in (settings.index_dir, settings.uploads_dir):
        if resolved.is_relative_to(inner.resolve()):
            raise BackupError(f"{dest} is inside {inner}, which the backup copies: choose a folder outside it")
    if dest.exists():
        if not dest.is_dir() or any(dest.iterdir()):
            raise BackupError(f"{dest} exists and is not an empty folder: back up into a new or empty one")
        return False
    dest.mkdir(parents=True)
    return True


def _clear(folder: Path, *, remove_folder: bool) -> None:
    if remove_folder:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for child in folder.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


def _copy_checkpoints(index_dir: Path, dest: Path) -> tuple[dict[int, dict[str, Any]], list[FileEntry]]:
    """Each collection's current checkpoint (the pointer and the files it names), under its writers' lock."""
    marks: dict[int, dict[str, Any]] = {}
    files: list[FileEntry] = []
    folders = sorted(p for p in index_dir.iterdir() if p.name.isdigit()) if index_dir.is_dir() else []
    for folder in folders:
        target = dest / INDEXES / folder.name
        try:
            # Held for the whole copy: a checkpoint the server writes meanwhile waits, so the pointer cannot
            # move on and the files it names cannot be removed halfway (on NFS an open file can vanish too).
            with ckpt.locked(folder):
                pointer = (folder / ckpt.POINTER).read_bytes()
                mark = json.loads(pointer)
                copied = [copy_file(folder / name, target / name, dest) for name in checkpoint_files(mark)]
                copied.append(copy_stream(io.BytesIO(pointer), target / ckpt.POINTER, dest))
        except FileNotFoundError:
            # No checkpoint yet, or the collection was deleted meanwhile: the database copy decides (a rebuild
            # at first start, or nothing).
            shutil.rmtree(target, ignore_errors=True)
            continue
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("Not copying the unreadable checkpoint in %s (%s); the restore rebuilds it", folder, exc)
            shutil.rmtree(target, ignore_errors=True)
            continue
        marks[int(folder.name)] = mark
        files += copied
    return marks, files


def _copy_sqlite(source: Path, target: Path) -> tuple[str | None, list[CollectionEntry]]:
    with closing(sqlite3.connect(source, timeout=30)) as live, closing(sqlite3.connect(target)) as copy:
        # One step (pages=-1): a single read transaction, so the copy is one snapshot. In WAL mode the
        # writers carry on meanwhile; a copy in several steps would restart whenever one commits.
        live.backup(copy)
        # The copy stands alone as one file, without a -wal beside it.
        copy.execute("PRAGMA journal_mode=DELETE")
    engine = create_engine(f"sqlite:///{target}")  # no WAL pragma: reading leaves the file alone
    try:
        with engine.connect() as connection:
            return _facts(connection)
    finally:
        engine.dispose()


def _facts(connection: Connection) -> tuple[str | None, list[CollectionEntry]]:
    """The schema revision and each collection's counts and watermarks, as the copied database holds them."""
    revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    of_collection = Image.collection_id == Collection.id
    count = select(func.count()).select_from(Image).where(of_collection).scalar_subquery()
    top = select(func.max(Image.id)).where(of_collection).scalar_subquery()
    tomb = select(func.max(Tombstone.id)).where(Tombstone.collection_id == Collection.id).scalar_subquery()
    columns = (Collection.id, Collection.name, Collection.model, Collection.dim, Collection.generation)
    rows = connection.execute(select(*columns, count, top, tomb).order_by(Collection.id))
    return revision, [
        CollectionEntry(cid, name, model, dim, generation, n or 0, image_max or 0, tomb_max or 0)
        for cid, name, model, dim, generation, n, image_max, tomb_max in rows
    ]


def _attach_checkpoints(
    dest: Path, collections: list[CollectionEntry], marks: dict[int, dict[str, Any]], files: list[FileEntry]
) -> list[FileEntry]:
    """Record each collection's copied checkpoint; drop those of collections the snapshot no longer has."""
    for entry in collections:
        if (mark := marks.get(entry.id)) is not None:
            keys = ("id_watermark", "tombstone_watermark", "generation", "model", "kind", "count", "file")
            entry.checkpoint = {k: mark.get(k) for k in keys}
    kept = {str(c.id) for c in collections}
    for stale in set(map(str, marks)) - kept:
        shutil.rmtree(dest / INDEXES / stale)
    return [f for f in files if not f.path.startswith(f"{INDEXES}/") or f.path.split("/")[1] in kept]


def _copy_uploads(uploads: Path, dest: Path) -> list[FileEntry]:
    files = []
    for path in uploads.rglob("*") if uploads.is_dir() else []:
        if path.name.startswith(".") or not path.is_file():  # an upload being written (index.files.atomic_write)
            continue
        try:
            files.append(copy_file(path, dest / UPLOADS / path.relative_to(uploads), dest))
        except FileNotFoundError:
            log.warning("Upload %s was removed while the backup ran; left out", path)
    return files


def _hashed(path: Path, root: Path) -> FileEntry:
    """A file another writer (SQLite, pg_dump) made, fsynced before it counts."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
    return hash_file(path, root)
