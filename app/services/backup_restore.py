"""Putting a backup back: verified whole before anything is written, then swapped in by renames.

The swap keeps one rule: an index checkpoint never sits beside a database it does not belong to (the live
index would take its vectors for that database's rows). So the old indexes go first, the database next, the
backup's indexes last; interrupted anywhere, the store at worst rebuilds indexes from whichever database is
there. What is left of an interrupted restore is visible: the data dir's `.pe-search-restore` folder.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from alembic.script import ScriptDirectory
from sqlalchemy import inspect, make_url

from app import __version__
from app.errors import BackupError, DamagedBackupError
from app.services import backup_postgres as pg
from app.services.backup_manifest import (
    INDEXES,
    POSTGRES_DUMP,
    SQLITE_FILE,
    UPLOADS,
    FileEntry,
    Manifest,
    Summary,
    copy_file,
    read_manifest,
    sqlite_path,
    verify_files,
)
from app.settings import Settings
from index.db import alembic_config, create_db_engine, session_factory
from index.files import fsync_dir
from index.job_records import interrupt_unfinished

# Inside the data dir, so that putting the staged files in place is a rename within one filesystem.
STAGING = ".pe-search-restore"
_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def restore(settings: Settings, src: Path, force: bool = False) -> Summary:
    """Restore SRC into the configured data dir and database, which must be empty unless `force`."""
    started = time.monotonic()
    manifest = read_manifest(src)
    postgres = pg.is_postgres(settings.db_url)
    kind = "postgresql" if postgres else "sqlite"
    if manifest.database != kind:
        raise BackupError(
            f"{src} holds a {manifest.database} database but PE_SEARCH_DATABASE_URL is {kind}: restore it into "
            f"the kind it came from (then `pe-search export` / `import` collections across if needed)"
        )
    _check_revision(manifest)
    pg_restore = pg.find_tool("pg_restore") if postgres else None
    db_path = None if postgres else sqlite_path(settings.db_url)
    replaced = _check_target(settings, db_path, force)
    verify_files(src, manifest)
    if pg_restore is not None:
        pg.check_archive(pg_restore, src / POSTGRES_DUMP, POSTGRES_DUMP)
    else:
        _integrity_check(src / SQLITE_FILE)
    # Nothing was written before this line: every refusal above leaves the target as it was.
    _install(settings, src, manifest, db_path, pg_restore)
    _end_copied_jobs(settings)
    return Summary("restore", src, settings.data_dir, manifest, time.monotonic() - started, replaced=replaced)


def _check_revision(manifest: Manifest) -> None:
    known = {s.revision for s in ScriptDirectory.from_config(alembic_config("")).walk_revisions()}
    if manifest.alembic_revision not in known:
        raise BackupError(
            f"the backup's database is at schema revision {manifest.alembic_revision}, which this pe-search "
            f"({__version__}) does not know: restore it with pe-search {manifest.pe_search_version} or newer"
        )


def _check_target(settings: Settings, db_path: Path | None, force: bool) -> bool:
    """True if there is something to replace; refused then unless `force`."""
    data_dir = settings.data_dir
    if data_dir.exists() and not data_dir.is_dir():
        raise BackupError(f"the data dir {data_dir} is not a folder")
    in_use = []
    if data_dir.is_dir() and any(data_dir.iterdir()):
        in_use.append(f"the data dir {data_dir} is not empty")
    if db_path is not None and db_path.exists() and not db_path.resolve().is_relative_to(data_dir.resolve()):
        in_use.append(f"the database {db_path} exists")
    if db_path is None and pg.has_tables(settings.db_url):
        url = make_url(settings.db_url).render_as_string(hide_password=True)
        in_use.append(f"the database {url} has tables")
    if in_use and not force:
        raise BackupError(
            f"{'; '.join(in_use)}: restore into an empty one, or add --force to replace its database, indexes "
            "and uploads (stop every pe-search process that uses them first)"
        )
    return bool(in_use)


def _integrity_check(path: Path) -> None:
    # immutable: nothing (no -wal, no -journal) is created beside the backup's copy while it is checked.
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)) as db:
            problems = [row[0] for row in db.execute("PRAGMA integrity_check(10)")]
    except sqlite3.DatabaseError as exc:
        raise DamagedBackupError(SQLITE_FILE, f"fails SQLite's integrity check: {exc}") from None
    if problems != ["ok"]:
        found = " ".join(" ".join(problems).split())  # one line: the CLI prints errors so
        raise DamagedBackupError(SQLITE_FILE, f"fails SQLite's integrity check: {found[:300]}")


def _copy_checked(src: Path, entry: FileEntry, root: Path, target: Path) -> None:
    """Copy and compare again: the backup could have changed since it was verified."""
    copied = copy_file(src / entry.path, target, root)
    if (copied.size, copied.sha256) != (entry.size, entry.sha256):
        raise DamagedBackupError(entry.path, "changed while it was being restored")


def _install(settings: Settings, src: Path, manifest: Manifest, db_path: Path | None, pg_restore: str | None) -> None:
    data_dir = settings.data_dir
    staging = data_dir / STAGING
    new, old = staging / "new", staging / "old"
    staged_db = db_path.with_name(f"{db_path.name}.restore") if db_path is not None else None
    created = not data_dir.exists()
    moved: list[tuple[Path, Path]] = []

    def move(source: Path, target: Path) -> None:
        if source.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
            moved.append((source, target))

    try:
        shutil.rmtree(staging, ignore_errors=True)  # what an interrupted restore left
        new.mkdir(parents=True)
        for entry in manifest.files:
            if entry.path == SQLITE_FILE:
                assert staged_db is not None
                staged_db.unlink(missing_ok=True)
                _copy_checked(src, entry, staged_db.parent, staged_db)
            elif entry.path != POSTGRES_DUMP:  # pg_restore reads it where it is
                _copy_checked(src, entry, new, new / entry.path)
        move(settings.index_dir, old / INDEXES)
        move(settings.uploads_dir, old / UPLOADS)
        move(new / UPLOADS, settings.uploads_dir)
        if db_path is not None and staged_db is not None:
            # The old database's -wal or -journal would be replayed into the new file: they go with it.
            for suffix in ("", *_SQLITE_SIDE_FILES):
                move(db_path.with_name(db_path.name + suffix), _old(db_path, suffix))
            move(staged_db, db_path)
        elif pg_restore is not None:
            pg.restore_dump(pg_restore, settings.db_url, src / POSTGRES_DUMP)  # one transaction: all or nothing
    except BaseException:
        # An error (not a crash) puts everything back as it was, the database included.
        for source, target in reversed(moved):
            os.replace(target, source)
        shutil.rmtree(data_dir if created else staging, ignore_errors=True)
        if staged_db is not None:
            staged_db.unlink(missing_ok=True)
        raise
    move(new / INDEXES, settings.index_dir)
    shutil.rmtree(staging)
    fsync_dir(data_dir)
    if db_path is not None:
        for suffix in ("", *_SQLITE_SIDE_FILES):
            _old(db_path, suffix).unlink(missing_ok=True)
        fsync_dir(db_path.parent)


def _end_copied_jobs(settings: Settings) -> None:
    """Jobs that were running or queued when the backup was taken ran in a process that is gone: left
    unfinished, the restored server would resume them and move the store past the backup's watermark."""
    engine = create_db_engine(settings.db_url)
    try:
        if inspect(engine).has_table("ingest_jobs"):  # a backup of a schema before revision 0006 has none
            with session_factory(engine).begin() as session:
                interrupt_unfinished(session, reason="restored from a backup taken while it ran; submit it again")
    finally:
        engine.dispose()


def _old(db_path: Path, suffix: str) -> Path:
    """Where the replaced database waits until the restore is done: beside it, so moving it is a rename."""
    return db_path.with_name(f".{db_path.name}{suffix}.replaced")
