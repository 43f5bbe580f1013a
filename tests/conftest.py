"""Session fixtures: the real PE-Core architecture (smallest variant, random weights), built once."""

from __future__ import annotations

import os

# Nothing in the suite may reach the model hub; fail fast instead of waiting on the network.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
from fastapi.testclient import TestClient

from app.encoder import PEEncoder
from app.ingest.ray_setup import prepare_ray_process
from app.main import create_app
from app.settings import Settings

# Before any test imports Ray, as the CLI does: a local Ray instance on loopback only, no usage stats.
prepare_ray_process(local=True)

# `postgres_server` (one real PostgreSQL for the session), `postgres_url` (a fresh database per test)
# and `db_url` (a test run once on SQLite, once on PostgreSQL).
pytest_plugins = ["tests.pg"]

TEST_MODEL = "PE-Core-T16-384"
TEST_MAX_BATCH = 16
TEST_MAX_BODY = 4 * 1024 * 1024
TEST_MAX_IMAGE_BYTES = 2 * 1024 * 1024
TEST_MAX_PIXELS = 4_000_000
TEST_MAX_TEXT = 2_000


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
        app.state.registry.get()  # blocks until the start-up load has finished
        yield test_client


@pytest.fixture(scope="session")
def encoder(client: TestClient) -> PEEncoder:
    return client.app.state.registry.get()
