"""Session fixtures: the real PE-Core architecture (smallest variant, random weights), built once.

Fixtures only; the helpers and constants they use are in tests/support/.
"""

from __future__ import annotations

import os
import shutil
import tempfile

# Nothing in the suite may reach the model hub; fail fast instead of waiting on the network.
os.environ["HF_HUB_OFFLINE"] = "1"
# One export cache for the session, its servers, CLI runs and encoders built directly (whose default folder
# is under XDG_CACHE_HOME): the test model is exported once, not per process, and never into ~/.cache.
os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="pe-search-test-cache-"))
os.environ.setdefault("PE_SEARCH_EXPORT_DIR", os.path.join(os.environ["XDG_CACHE_HOME"], "pe-search", "exports"))

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.ingest.ray_setup import prepare_ray_process
from app.model.encoder import PEEncoder
from app.model.variants import get_variant
from app.settings import Settings
from tests.support import pg
from tests.support.constants import (
    OTHER_READ_KEY,
    READ_KEY,
    TEST_MAX_BATCH,
    TEST_MAX_BODY,
    TEST_MAX_IMAGE_BYTES,
    TEST_MAX_PIXELS,
    TEST_MAX_TEXT,
    TEST_MODEL,
    WRITE_KEY,
)

# Before any test imports Ray, as the CLI does: a local Ray instance on loopback only, no usage stats.
prepare_ray_process(local=True)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects anything
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`postgres` on every test that needs the real PostgreSQL server (`db_url` marks its own parameter)."""
    for item in items:
        if "postgres_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session", autouse=True)
def _export_cache_removed_at_the_end() -> Iterator[None]:
    """The session's export cache holds hundreds of MB of ONNX: gone with the session (if it made it)."""
    yield
    root = os.environ["XDG_CACHE_HOME"]
    if os.path.basename(root).startswith("pe-search-test-cache-"):
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        model=TEST_MODEL,
        weights="random",
        device="cpu",
        data_dir=tmp_path_factory.mktemp("data"),
        max_batch=TEST_MAX_BATCH,
        max_body_bytes=TEST_MAX_BODY,
        max_image_bytes=TEST_MAX_IMAGE_BYTES,
        max_image_pixels=TEST_MAX_PIXELS,
        max_text_chars=TEST_MAX_TEXT,
        inference_batch=8,
        # Tests fetch from a server on 127.0.0.1; the refusal rules are tested as pure functions.
        url_allow_http=True,
        url_allow_ip_hosts=True,
        url_allow_private_hosts=True,
    )


@pytest.fixture(scope="session")
def client(settings: Settings) -> TestClient:
    app = create_app(settings)
    with TestClient(app) as test_client:
        app.state.services.registry.get()  # blocks until the start-up load has finished
        yield test_client


@pytest.fixture(scope="session")
def encoder(client: TestClient) -> PEEncoder:
    return client.app.state.services.registry.get()


@pytest.fixture(scope="session")
def torch_encoder(settings: Settings) -> PEEncoder:
    """The same model on the torch runtime: the reference the exported runtimes are held to."""
    return PEEncoder(
        get_variant(settings.model),
        weights="random",
        device="cpu",
        runtime="torch",
        batch_size=settings.inference_batch,
    ).load()


@pytest.fixture(scope="session", params=["auto", "torch"])
def any_encoder(request: pytest.FixtureRequest) -> PEEncoder:
    """Each runtime in turn: `auto` (ONNX Runtime, or OpenVINO for bf16 images) and torch."""
    return request.getfixturevalue("encoder" if request.param == "auto" else "torch_encoder")


@pytest.fixture(scope="session")
def keyed_client(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    """The test app with API keys: WRITE_KEY may write, READ_KEY and OTHER_READ_KEY only read."""
    locked = settings.model_copy(
        update={
            "api_keys": (WRITE_KEY,),
            "read_api_keys": (READ_KEY, OTHER_READ_KEY),
            "data_dir": tmp_path_factory.mktemp("secured"),
        }
    )
    app = create_app(locked)
    with TestClient(app) as test_client:
        app.state.services.registry.get()
        yield test_client


# --- PostgreSQL (tests/support/pg.py) ---


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[pg.PostgresServer]:
    """One real PostgreSQL server on loopback for the session."""
    server = pg.new_server()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture()
def postgres_url(postgres_server: pg.PostgresServer) -> Iterator[str]:
    """A new, empty database for one test."""
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    postgres_server.drop_database(name)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each backend: a test using it runs once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'meta.db'}"
    return request.getfixturevalue("postgres_url")
