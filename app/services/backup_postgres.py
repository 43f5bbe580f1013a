"""pg_dump and pg_restore for backups of a PostgreSQL metadata database.

The password travels in PGPASSWORD, never on a command line (which `ps` shows every user) or in a message.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import URL, Connection, Engine, inspect, make_url, text
from sqlalchemy.exc import SQLAlchemyError

from app.errors import BackupError, DamagedBackupError
from index.db import create_db_engine

_INSTALL_HINT = (
    "install PostgreSQL's client tools of your server's major version or newer (Debian/Ubuntu: apt-get install "
    "postgresql-client, or put /usr/lib/postgresql/<N>/bin on PATH) and run it again"
)


def is_postgres(url: str) -> bool:
    return url.startswith("postgresql")


def find_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if name == "pg_dump":
            raise BackupError(
                f"pg_dump is not on PATH: {_INSTALL_HINT}. Nothing was written. By hand, copy the index "
                "checkpoints first (each collection's folder under PE_SEARCH_DATA_DIR/indexes, under its LOCK) and "
                "then run `pg_dump --format=custom`, so the dump is at or after every checkpoint."
            )
        raise BackupError(f"{name} is not on PATH: {_INSTALL_HINT}. Nothing was restored.")
    return path


def libpq_target(url: str) -> tuple[str, dict[str, str]]:
    """The libpq URI of a SQLAlchemy URL (no driver, no password) and an environment carrying the password."""
    parsed = make_url(url)
    env = dict(os.environ)
    if parsed.password is not None:
        env["PGPASSWORD"] = str(parsed.password)
    # Built anew: URL.set(password=None) would keep the password (None means "unchanged" there).
    bare = URL.create("postgresql", parsed.username, None, parsed.host, parsed.port, parsed.database, parsed.query)
    return bare.render_as_string(hide_password=False), env


def _run(tool: str, url: str, args: list[str]) -> None:
    uri, env = libpq_target(url)
    command = [tool, f"--dbname={uri}", *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    what = Path(tool).name
    if result.returncode != 0:
        tail = " ".join((result.stderr or result.stdout).split())[-2000:]
        raise BackupError(f"{what} failed (exit {result.returncode}): {tail}")


@contextlib.contextmanager
def exported_snapshot(url: str) -> Iterator[tuple[Connection, str]]:
    """A transaction whose snapshot pg_dump can share (`--snapshot`): the manifest's counts and watermarks are
    read from exactly the state the dump holds, while writers carry on."""
    engine = create_db_engine(url)
    try:
        with _connect(engine) as connection:
            connection.execution_options(isolation_level="REPEATABLE READ")
            with connection.begin():
                yield connection, connection.execute(text("SELECT pg_export_snapshot()")).scalar_one()
    finally:
        engine.dispose()


def dump(pg_dump: str, url: str, snapshot: str, out: Path) -> None:
    _run(pg_dump, url, ["--format=custom", f"--snapshot={snapshot}", f"--file={out}"])


def check_archive(pg_restore: str, archive: Path, name: str) -> None:
    """pg_restore reads the archive's table of contents: a dump it cannot read is refused before anything changes."""
    result = subprocess.run([pg_restore, "--list", str(archive)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DamagedBackupError(name, f"pg_restore cannot read it ({result.stderr.strip()[-500:]})")


def restore_dump(pg_restore: str, url: str, archive: Path) -> None:
    # One transaction: a failed restore leaves the database as it was. --no-owner: the objects belong to the
    # role of PE_SEARCH_DATABASE_URL, which may not be the one that owned them where the dump was taken.
    _run(pg_restore, url, ["--clean", "--if-exists", "--no-owner", "--single-transaction", str(archive)])


def has_tables(url: str) -> bool:
    engine = create_db_engine(url)
    try:
        with _connect(engine) as connection:
            return bool(inspect(connection).get_table_names())
    finally:
        engine.dispose()


def _connect(engine: Engine) -> Connection:
    try:
        return engine.connect()
    except SQLAlchemyError as exc:
        where = engine.url.render_as_string(hide_password=True)
        cause = " ".join(str(getattr(exc, "orig", None) or exc).split())  # one line
        raise BackupError(f"cannot connect to the database {where}: {cause}") from None
