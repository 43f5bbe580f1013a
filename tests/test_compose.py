"""docker-compose.yml: linted against the Compose Specification's JSON schema, and its services' commands and
healthchecks run here on loopback (no Docker engine on this host): the writer and a read-only reader as
`pe-search serve` processes on a real PostgreSQL server (tests/support/pg.py), the postgres service's
pg_isready against that server."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from sqlalchemy.engine import make_url

from tests.support import pg
from tests.support.images import encode, image_object, photo
from tests.support.server import READY_DEADLINE, REPO_ROOT, T16, free_port, server_env, stop_process

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text()
CHECK_JSONSCHEMA = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
WRITER, READER, POSTGRES = "pe-search", "pe-search-reader", "postgres"
HEALTH_POLL_S = 0.5

# --- Compose's variable interpolation, the subset this file may use ---

_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-)(?P<default>.*))?", re.S)


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """What Compose does to every value before it validates the file: `$$`, `$VAR`, `${VAR}`, `${VAR:-default}`
    (unset or empty) and `${VAR-default}` (unset); any other form raises, so a new one is noticed here."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["named"]:
            return env.get(match["named"], "")
        braced = _BRACED.fullmatch(match["braced"])
        if braced is None:
            raise ValueError(f"interpolation not handled here: ${{{match['braced']}}}")
        name, op, default = braced["name"], braced["op"], braced["default"]
        if op == ":-":
            return env.get(name) or default
        if op == "-":
            return env.get(name, default)
        return env.get(name, "")

    return _VARIABLE.sub(substitute, value)


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The file as Compose sees it: YAML anchors and merge keys resolved, then variables from env (none: defaults)."""
    return interpolate(yaml.safe_load(COMPOSE_FILE.read_text()), env or {})


def seconds(duration: str) -> float:
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert parts and duration, f"not a Compose duration: {duration!r}"
    hours, minutes, secs = (int(part or 0) for part in parts.groups())
    return hours * 3600 + minutes * 60 + secs


def host_port(mapping: str) -> tuple[str, int, int]:
    """`[IP:]HOST:CONTAINER` -> (ip, host port, container port)."""
    *ip, published, target = mapping.split(":")
    return (ip[0] if ip else "0.0.0.0", int(published), int(target))


def dockerfile_healthcheck() -> list[str]:
    line = next(row for row in DOCKERFILE.splitlines() if row.strip().startswith('CMD ["python"'))
    return json.loads(line.strip()[len("CMD ") :])


def dockerfile_cmd() -> list[str]:
    """The image's CMD: what a service without `command` runs."""
    [line] = [row for row in DOCKERFILE.splitlines() if row.startswith("CMD [")]
    return json.loads(line[len("CMD ") :])


# --- Lint: the official schema, then what `docker compose config` checks beyond it ---


def check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHECK_JSONSCHEMA, "--color", "never", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_file_and_its_interpolated_form_follow_the_compose_specification(tmp_path: Path) -> None:
    raw = check_jsonschema(COMPOSE_FILE)
    assert raw.returncode == 0, raw.stdout + raw.stderr
    interpolated = tmp_path / "interpolated.json"
    interpolated.write_text(json.dumps(compose()))
    result = check_jsonschema(interpolated)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_what_compose_would(tmp_path: Path) -> None:
    broken = compose()
    broken["services"][WRITER]["healthcheck"]["intervall"] = "5s"  # a typo Compose refuses
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    result = check_jsonschema(path)
    assert result.returncode == 1 and "intervall" in result.stdout, result.stdout + result.stderr


def test_references_between_services_and_volumes_resolve() -> None:
    config = compose()
    services, volumes = config["services"], config.get("volumes") or {}
    assert set(services) == {POSTGRES, WRITER, READER}
    published: list[tuple[str, int]] = []
    for name, service in services.items():
        assert "image" in service or "build" in service, f"{name}: neither image nor build"
        assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        for timing in ("interval", "timeout", "start_period"):
            seconds(service["healthcheck"][timing])
        for target, condition in service.get("depends_on", {}).items():
            assert target in services and target != name, f"{name} depends on unknown {target}"
            assert condition == {"condition": "service_healthy"}, (name, target)
            assert "healthcheck" in services[target], f"{name} waits for {target}, which has no healthcheck"
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            assert not source.startswith((".", "/")), f"{name}: a bind mount ({mount}), not a named volume"
            assert source in volumes, f"{name}: volume {source} is not declared"
        published += [host_port(mapping)[:2] for mapping in service.get("ports", [])]
    assert len(published) == len(set(published)), f"a host port is published twice: {published}"
    used = {mount.split(":")[0] for service in services.values() for mount in service.get("volumes", [])}
    assert used == set(volumes), "a declared volume no service uses"


def test_writer_and_reader_share_a_database_a_data_volume_and_the_image_healthcheck() -> None:
    services = compose()["services"]
    writer, reader, postgres = services[WRITER], services[READER], services[POSTGRES]
    assert postgres["image"].split(":")[0] == "postgres" and "pg_isready" in postgres["healthcheck"]["test"]
    assert "/var/lib/postgresql/data" in {mount.split(":")[1] for mount in postgres["volumes"]}
    assert writer["depends_on"] == {POSTGRES: {"condition": "service_healthy"}}
    assert set(reader["depends_on"]) == {POSTGRES, WRITER}  # the writer migrates first, as README says
    assert "profiles" not in writer and reader["profiles"] == ["reader"]
    assert reader["environment"]["PE_SEARCH_READ_ONLY"] == "true"
    assert "PE_SEARCH_READ_ONLY" not in writer["environment"]
    url = make_url(writer["environment"]["PE_SEARCH_DATABASE_URL"])
    assert reader["environment"]["PE_SEARCH_DATABASE_URL"] == writer["environment"]["PE_SEARCH_DATABASE_URL"]
    assert (url.drivername, url.host, url.port) == ("postgresql+psycopg", POSTGRES, 5432)
    credentials = postgres["environment"]
    assert (url.username, url.password, url.database) == (
        credentials["POSTGRES_USER"],
        credentials["POSTGRES_PASSWORD"],
        credentials["POSTGRES_DB"],
    )
    data_mounts = [{m.split(":")[0] for m in s["volumes"] if m.split(":")[1] == "/data"} for s in (writer, reader)]
    assert data_mounts[0] == data_mounts[1] and len(data_mounts[0]) == 1  # the Dockerfile's VOLUME, shared
    for service in (writer, reader):
        assert service["build"] == writer["build"]  # one image
        assert service["healthcheck"]["test"] == ["CMD", *dockerfile_healthcheck()]
        assert [host_port(mapping)[2] for mapping in service["ports"]] == [9001]  # the image's EXPOSE
        assert host_port(service["ports"][0])[0] == "127.0.0.1"  # by default, nothing beyond this host


def test_the_build_installs_extras_the_project_defines() -> None:
    extras = compose()["services"][WRITER]["build"]["args"]["EXTRAS"].split(",")
    defined = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "ARG EXTRAS" in DOCKERFILE
    assert "postgres" in extras  # PE_SEARCH_DATABASE_URL names psycopg
    assert set(extras) <= set(defined) - {"dev"}, extras


def test_credentials_come_from_the_environment_everywhere_they_are_used() -> None:
    env = {"POSTGRES_USER": "ops", "POSTGRES_PASSWORD": "s3cret-from-env", "POSTGRES_DB": "images"}
    services = compose(env)["services"]
    assert services[POSTGRES]["environment"] == env
    for name in (WRITER, READER):
        url = make_url(services[name]["environment"]["PE_SEARCH_DATABASE_URL"])
        assert (url.username, url.password, url.database) == ("ops", "s3cret-from-env", "images")
    assert services[POSTGRES]["healthcheck"]["test"][1:] == ["pg_isready", "-U", "ops", "-d", "images"]
    with_port = compose({"READER_PORT": "9100", "BIND_ADDRESS": "0.0.0.0"})["services"][READER]["ports"]
    assert with_port == ["0.0.0.0:9100:9001"]


# --- The services' commands, run here against a PostgreSQL server on loopback ---


def pg_isready() -> str | None:
    """On PATH (Debian's postgresql-client links it into /usr/bin), else beside the server's binaries."""
    bin_dir = pg.find_bin_dir()
    beside = bin_dir / "pg_isready" if bin_dir is not None else None
    return shutil.which("pg_isready") or (str(beside) if beside is not None and beside.exists() else None)


@pytest.mark.postgres
def test_the_postgres_healthcheck_runs_pg_isready(postgres_server: pg.PostgresServer) -> None:
    binary = pg_isready()
    if binary is None:
        pytest.skip("pg_isready is not installed (apt-get install postgresql-client)")
    test = compose()["services"][POSTGRES]["healthcheck"]
    kind, program, *args = test["test"]
    assert (kind, program) == ("CMD", "pg_isready")
    timeout = seconds(test["timeout"])

    # In the container pg_isready reaches the server on its default socket; here, the loopback server.
    def check(port: int) -> int:
        env = {"PGHOST": "127.0.0.1", "PGPORT": str(port)}
        return subprocess.run([binary, *args], env=env, capture_output=True, timeout=timeout).returncode

    assert check(postgres_server.port) == 0
    assert check(free_port()) == 2  # no response: what an unhealthy postgres service reports


@pytest.fixture()
def compose_database(postgres_server: pg.PostgresServer) -> Iterator[str]:
    """What the postgres image makes of its environment (POSTGRES_USER owning POSTGRES_DB) on the loopback
    server; yields the services' database URL with the service's host and port swapped for that server's."""
    import psycopg

    config = compose()
    credentials = config["services"][POSTGRES]["environment"]
    user, password, database = (credentials[key] for key in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"))
    dsn = (
        f"host=127.0.0.1 port={postgres_server.port} user={pg.SERVICE_USER} "
        f"password={postgres_server.password} dbname=postgres"
    )
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")
        admin.execute(f"CREATE DATABASE {database} OWNER {user}")
    url = make_url(config["services"][WRITER]["environment"]["PE_SEARCH_DATABASE_URL"])
    try:
        yield url.set(host="127.0.0.1", port=postgres_server.port).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
            admin.execute(f"DROP ROLE IF EXISTS {user}")


class Service:
    """One compose service's command as a process here: its environment from the file, its database, data and
    model volumes swapped for local ones, bound to 127.0.0.1, with random weights of the small test model."""

    def __init__(self, name: str, database_url: str, volumes: Path) -> None:
        self.name = name
        self.spec = compose()["services"][name]
        self.port = free_port()
        self.log_path = volumes / f"{name}.log"
        command = self.spec.get("command") or dockerfile_cmd()
        assert command[0] == "pe-search", command
        self.command = [sys.executable, "-m", "app.cli", *command[1:]]  # the `pe-search` entry point
        mounts = {mount.split(":")[1]: volumes / mount.split(":")[0] for mount in self.spec["volumes"]}
        for path in mounts.values():
            path.mkdir(exist_ok=True)  # a named volume exists before its container starts
        self.env = {
            **server_env(mounts["/data"], T16),
            **self.spec["environment"],
            "PE_SEARCH_DATABASE_URL": database_url,
            "PE_SEARCH_DATA_DIR": str(mounts["/data"]),
            "PE_SEARCH_CACHE_DIR": str(mounts["/models"]),
            "PE_SEARCH_HOST": "127.0.0.1",
            "PE_SEARCH_PORT": str(self.port),
            "PE_SEARCH_MODEL": T16,
            "PE_SEARCH_WEIGHTS": "random",
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Service:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command, cwd=REPO_ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        return self

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-80:])

    def healthcheck(self) -> bool:
        """The service's healthcheck `test`, run as Docker runs it: exec'd with the container's environment."""
        check = self.spec["healthcheck"]
        kind, program, *args = check["test"]
        assert (kind, program) == ("CMD", "python")
        try:
            result = subprocess.run(
                [sys.executable, *args], env=self.env, capture_output=True, timeout=seconds(check["timeout"])
            )
        except subprocess.TimeoutExpired:
            return False
        return result.returncode == 0

    def wait_healthy(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + READY_DEADLINE
        while not self.healthcheck():
            if self.process.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name} not healthy in {READY_DEADLINE:.0f} s:\n{self.log_tail()}", pytrace=False)
            time.sleep(HEALTH_POLL_S)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


@pytest.mark.postgres
@pytest.mark.slow
def test_writer_then_reader_come_up_healthy_and_the_reader_refuses_writes(
    compose_database: str, tmp_path: Path
) -> None:
    writer = Service(WRITER, compose_database, tmp_path)
    reader = Service(READER, compose_database, tmp_path)
    assert writer.env["PE_SEARCH_DATA_DIR"] == reader.env["PE_SEARCH_DATA_DIR"]
    assert reader.env["PE_SEARCH_READ_ONLY"] == "true" and "PE_SEARCH_READ_ONLY" not in writer.env
    try:
        writer.start().wait_healthy()  # the reader's depends_on: service_healthy
        reader.start().wait_healthy()
        data = encode(photo(160, 120, seed=811))
        stored = requests.post(
            f"{writer.url}/images", json={"image": image_object(data), "collection": "compose"}, timeout=60
        )
        assert stored.status_code == 200, stored.text
        found = requests.post(
            f"{reader.url}/search", json={"collection": "compose", "image": image_object(data), "top_k": 1}, timeout=60
        )
        assert found.status_code == 200, found.text
        assert [hit["id"] for hit in found.json()["results"]] == [stored.json()["id"]]
        refused = requests.post(
            f"{reader.url}/images", json={"image": image_object(data), "collection": "compose"}, timeout=60
        )
        assert refused.status_code == 403 and "read-only" in refused.json()["message"], refused.text
    finally:
        reader.stop()
        writer.stop()
    assert not writer.healthcheck() and not reader.healthcheck()  # stopped: the same check now fails
