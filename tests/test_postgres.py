"""What only PostgreSQL can get wrong or do: writers committing out of id order, processes migrating
at once, the migration commands on a PostgreSQL URL, and several API processes on one database.
A real PostgreSQL server on loopback (tests/support/pg.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from fastapi.testclient import TestClient
from sqlalchemy import inspect, text

from app.api.app import create_app
from app.settings import Settings
from index import crud
from index.db import create_db_engine, current_revision, head_revision
from index.store import VectorStore
from tests.support.images import encode, image_object, photo
from tests.support.server import READY_DEADLINE, T16, Server, launch, wait_ready
from tests.support.store import DIM, MODEL, add, clustered, items, open_store

REPO_ROOT = Path(__file__).resolve().parent.parent
DEADLINE_S = 30


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def waiting_on_a_lock(store: VectorStore) -> bool:
    with store.engine.connect() as connection:
        return bool(connection.execute(text("SELECT count(*) FROM pg_locks WHERE NOT granted")).scalar())


@pytest.mark.parametrize("write", ["add", "delete"])
def test_a_writer_committing_late_is_never_skipped_by_a_reader(tmp_path: Path, postgres_url: str, write: str) -> None:
    """Transaction A draws the lower id, B the higher; a reader syncs between B and A.

    Were B allowed to commit first, the reader's watermark would pass A's id before A
    commits and A's row (or tombstone) would never reach its index.
    """
    writer = open_store(tmp_path, postgres_url)
    reader = open_store(tmp_path, postgres_url)
    collection = writer.create_collection("c", model=MODEL, dim=DIM)
    vectors = clustered(4, seed=21)
    if write == "add":
        first, second = items(vectors[:2])
        late = []
    else:
        late = add(writer, collection.id, vectors)
        assert len(reader.search(collection.id, vectors[0], 4)) == 4
    others: list[object] = []
    with writer.sessions() as session, session.begin():  # transaction A, open until the block ends
        if write == "add":
            [(late_id, _)] = crud.add_batch(session, collection_id=collection.id, items=[first])
            late = [late_id]
            b = threading.Thread(target=lambda: others.append(writer.add_images(collection.id, [second])))
        else:
            crud.delete_images(session, image_ids=late[:1])
            b = threading.Thread(target=lambda: others.append(writer.delete_images(late[1:2])))
        b.start()
        wait_for(lambda: not b.is_alive() or waiting_on_a_lock(reader), "writer B to finish or wait")
        reader.search(collection.id, vectors[0], 4)  # the reader catches up while A is uncommitted
    b.join(DEADLINE_S)
    assert others, "writer B never finished"
    found = {h.id for h in reader.search(collection.id, vectors[0], 4)}
    if write == "add":
        [(second_id, _)] = others[0]
        assert found == {late[0], second_id} and second_id > late[0]
    else:
        assert found == set(late[2:])
    writer.engine.dispose()
    reader.engine.dispose()


def _env(url: str, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PE_SEARCH_")}
    return {**env, "PE_SEARCH_DATABASE_URL": url, "PE_SEARCH_DATA_DIR": str(data_dir)}


def test_processes_migrating_together_apply_each_migration_once(postgres_url: str, tmp_path: Path) -> None:
    """`pe-search db upgrade` (and each API process's start-up) on one database at the same moment."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "app.cli", "db", "upgrade"],
            cwd=REPO_ROOT,
            env=_env(postgres_url, tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, err
        assert f"database at revision {head_revision()}" in out
    assert not (tmp_path / "pe-search.db").exists()  # nothing went to the default SQLite file
    engine = create_db_engine(postgres_url)
    assert current_revision(engine) == head_revision()
    assert "images" in inspect(engine).get_table_names()
    engine.dispose()


def test_alembic_command_line_takes_the_url_from_settings(postgres_url: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=REPO_ROOT,
        env=_env(postgres_url, tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    engine = create_db_engine(postgres_url)
    assert current_revision(engine) == head_revision()
    with engine.connect() as connection:
        kind = connection.execute(
            text(
                "SELECT data_type FROM information_schema.columns"
                " WHERE table_name = 'images' AND column_name = 'metadata'"
            )
        ).scalar()
    assert kind == "jsonb"
    engine.dispose()


def _health(server: Server) -> bool:
    if server.process.poll() is not None:
        raise AssertionError(f"server exited:\n{server.log_tail()}")
    try:
        return requests.get(f"{server.url}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _search(server: Server, data: bytes, top_k: int = 3) -> list[int]:
    response = requests.post(
        f"{server.url}/search", json={"collection": "shared", "image": image_object(data), "top_k": top_k}, timeout=60
    )
    assert response.status_code == 200, response.text
    return [hit["id"] for hit in response.json()["results"]]


@pytest.mark.slow
def test_one_writer_and_a_read_only_server_share_postgres_and_the_index_dir(postgres_url: str, tmp_path: Path) -> None:
    """Issue #7.4: the writer ingests, another API process serves the same collection without a restart."""
    shared = {"PE_SEARCH_DATABASE_URL": postgres_url}
    writer = launch(tmp_path, T16, shared)
    reader = None
    try:
        # The writer migrates while it starts (it answers /health once its store is open); a reader never migrates.
        wait_for(lambda: _health(writer), "the writer to open its store")
        reader = launch(tmp_path, T16, {**shared, "PE_SEARCH_READ_ONLY": "1"})
        for server in (writer, reader):
            assert wait_ready(server, READY_DEADLINE) is None, server.log_tail()
        photos = [encode(photo(160, 120, seed=700 + i)) for i in range(3)]
        ids = []
        for i, data in enumerate(photos):
            response = requests.post(
                f"{writer.url}/images",
                json={"image": image_object(data), "collection": "shared", "metadata": {"i": i}},
                timeout=60,
            )
            assert response.status_code == 200, response.text
            ids.append(response.json()["id"])
        for image_id, data in zip(ids, photos):
            assert _search(reader, data)[0] == image_id  # committed by the writer, found by the reader

        refused = [
            requests.post(
                f"{reader.url}/images", json={"image": image_object(photos[0]), "collection": "shared"}, timeout=60
            ),
            requests.delete(f"{reader.url}/images/{ids[0]}", timeout=60),
            requests.patch(f"{reader.url}/images/{ids[0]}", json={"metadata": {"i": 9}}, timeout=60),
        ]
        for response in refused:
            assert response.status_code == 403 and "read-only" in response.json()["message"], response.text

        assert requests.delete(f"{writer.url}/images/{ids[0]}", timeout=60).status_code == 204
        assert ids[0] not in _search(reader, photos[0])
        # Another writer rebuilds the index as HNSW and checkpoints it: the reader loads that checkpoint.
        result = subprocess.run(
            [sys.executable, "-m", "app.cli", "reindex", "--collection", "shared", "--index-type", "hnsw"],
            cwd=REPO_ROOT,
            env=_env(postgres_url, tmp_path / "data"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert _search(reader, photos[1])[0] == ids[1]
        [collection] = requests.get(f"{reader.url}/collections", timeout=60).json()
        assert (collection["live_index"], collection["count"], collection["indexed"]) == ("hnsw", 2, 2)
        assert "Rebuilding the index" not in reader.log_tail(10_000)
    finally:
        for server in (writer, reader):
            if server is not None:
                server.stop()


def test_nul_characters_get_a_4xx_on_both_backends(db_url: str, tmp_path: Path, settings: Settings) -> None:
    """PostgreSQL refuses U+0000 in jsonb and text; SQLite stores it. Both must answer 4xx, never 500."""
    app = create_app(settings.model_copy(update={"database_url": db_url, "data_dir": tmp_path}))
    with TestClient(app, raise_server_exceptions=False) as client:
        image = image_object(encode(photo(seed=4)))
        stored = client.post("/images", json={"image": image, "metadata": {"k": "fine"}})
        assert stored.status_code == 200, stored.text
        image_id = stored.json()["id"]
        requests = [
            # New bytes each time: the same bytes again would only return the stored image.
            ("post", "/images", {"image": image_object(encode(photo(seed=5))), "metadata": {"k": "a\x00b"}}),
            ("post", "/images", {"image": image_object(encode(photo(seed=6))), "metadata": {"a\x00b": 1}}),
            (
                "post",
                "/images",
                {"image": image_object(encode(photo(seed=7))), "metadata": {"nested": [{"k": "\x00"}]}},
            ),
            ("patch", f"/images/{image_id}", {"metadata": {"k": "\x00"}}),
            ("post", "/search", {"text": "a cat", "filter": {"metadata": {"k": "\x00"}}}),
            ("post", "/search", {"text": "a cat", "filter": {"metadata": {"k\x00": "x"}}}),
            ("post", "/search", {"text": "a cat", "filter": {"uri_prefix": "upload:\x00"}}),
        ]
        for method, route, body in requests:
            response = getattr(client, method)(route, json=body)
            assert response.status_code == 422, (route, body, response.status_code, response.text)
            assert "NUL" in response.text
        # Nothing was stored, and the stored image keeps its metadata.
        assert client.get(f"/images/{image_id}").json()["metadata"] == {"k": "fine"}
        assert [c["count"] for c in client.get("/collections").json()] == [1]
