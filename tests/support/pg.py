"""A throwaway PostgreSQL server on loopback for the tests: Debian's binaries, a temp cluster, a database per test.

The fixtures on top of it (`postgres_server`, `postgres_url`, `db_url`) are in tests/conftest.py.

`initdb` refuses to run as root, so under root the cluster belongs to the `postgres`
user the Debian package creates. Durability is switched off (fsync, synchronous
commit): the cluster is deleted at the end of the session anyway.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support.server import free_port

# CI sets it, so a machine without PostgreSQL fails the PostgreSQL tests instead of skipping them.
REQUIRE_ENV = "PE_SEARCH_REQUIRE_POSTGRES"
SERVICE_USER = "postgres"
START_TIMEOUT_S = 60
_START_ATTEMPTS = 3


def _has_server(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres"))


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path))


def find_bin_dir() -> Path | None:
    """The server binaries: pg_config's bindir, else the newest Debian install, else initdb on PATH."""
    candidates: list[Path] = []
    if pg_config := shutil.which("pg_config"):
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if result.returncode == 0 and result.stdout.strip():
            candidates.append(Path(result.stdout.strip()))
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)]
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).resolve().parent)
    return next((c for c in candidates if _has_server(c)), None)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


class PostgresServer:
    """One cluster in a temp dir, listening on 127.0.0.1 and a socket in that dir only."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="pe-search-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.password = secrets.token_hex(16)
        self.port = 0
        self._as_service_user = os.geteuid() == 0
        self._names = itertools.count(1)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self._as_service_user:
            command = ["runuser", "-u", SERVICE_USER, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=False, cwd=self.root)

    def _check(self, result: subprocess.CompletedProcess[str], what: str) -> None:
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{what} failed ({result.returncode}): {result.stderr or result.stdout}\n{log}")

    def start(self) -> PostgresServer:
        if self._as_service_user:
            shutil.chown(self.root, user=SERVICE_USER)
        password_file = self.root / "password"
        password_file.write_text(self.password + "\n")
        if self._as_service_user:
            shutil.chown(password_file, user=SERVICE_USER)
        self._check(
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                SERVICE_USER,
                f"--pwfile={password_file}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ),
            "initdb",
        )
        password_file.unlink()
        for attempt in range(_START_ATTEMPTS):
            # Another process may take the free port before the server binds it: try another.
            self.port = free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            result = self._run(
                "pg_ctl",
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-o",
                options,
                "-w",
                "-t",
                str(START_TIMEOUT_S),
                "start",
            )
            if result.returncode == 0:
                return self
            if attempt == _START_ATTEMPTS - 1:
                self._check(result, "pg_ctl start")
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SERVICE_USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import psycopg

        dsn = f"host=127.0.0.1 port={self.port} user={SERVICE_USER} password={self.password} dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(sql)

    def create_database(self) -> str:
        name = f"test_{next(self._names)}"
        self._admin(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        # FORCE: a test that failed may leave connections open (a server process, a pool).
        self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def unavailable(reason: str) -> None:
    """Skip, or fail where CI asked for PostgreSQL to be tested."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1)", pytrace=False)
    pytest.skip(reason)


def new_server() -> PostgresServer:
    """A cluster for this machine, not started yet; skips (or fails, under CI) where none can run."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        unavailable("PostgreSQL server binaries not found (apt-get install postgresql)")
    if os.geteuid() == 0 and (shutil.which("runuser") is None or not _user_exists(SERVICE_USER)):
        unavailable(f"running as root without runuser or a {SERVICE_USER!r} user: initdb refuses root")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        unavailable("psycopg is not installed (pip install 'pe-search[postgres]')")
    return PostgresServer(bin_dir)
