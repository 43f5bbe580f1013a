"""Prometheus metrics at /metrics: requests by route template, forward passes, ingest counts, store gauges."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import prometheus_client
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.api.app import create_app
from app.api.keys import KeyRing
from app.settings import Settings
from index import live as live_module
from tests.support.constants import TEST_MODEL
from tests.support.images import encode, photo
from tests.support.ingest import make_folder

Families = dict[str, list]


def scrape(client: TestClient) -> Families:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == prometheus_client.CONTENT_TYPE_LATEST
    return {family.name: family.samples for family in text_string_to_metric_families(response.text)}


def value(families: Families, family: str, sample: str | None = None, **labels: str) -> float:
    """The sample's value, 0 when the series does not exist (yet)."""
    sample = sample or family
    for s in families.get(family, []):
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return 0.0


def fresh_collection() -> str:
    return f"metrics-{uuid.uuid4().hex[:8]}"


def test_metrics_route_is_public_and_not_in_the_schema(client: TestClient) -> None:
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]
    keys = client.app.state.keys
    client.app.state.keys = KeyRing(write=("secret",))
    try:
        assert client.get("/metrics").status_code == 200
        assert client.post("/perception_encoder/embed_text", json={"text": "x"}).status_code == 401
    finally:
        client.app.state.keys = keys


def test_requests_passes_ingest_and_store(client: TestClient, settings: Settings) -> None:
    collection = fresh_collection()
    batch = settings.inference_batch
    texts = [f"text {i}" for i in range(batch + 2)]  # two forward passes
    before = scrape(client)

    assert client.post("/perception_encoder/embed_text", json={"text": texts}).status_code == 200  # 2 text passes
    upload = client.post(
        "/images",
        files={"file": ("photo.jpg", encode(photo(240, 180, seed=900), "JPEG"), "image/jpeg")},
        data={"collection": collection, "metadata": json.dumps({"n": 1})},
    )
    assert upload.status_code == 200, upload.text  # 1 image pass
    found = client.post("/search", json={"collection": collection, "text": "a photo"})  # 1 text pass
    assert found.status_code == 200 and found.json()["results"][0]["id"] == upload.json()["id"]
    assert client.get("/images/987654321").status_code == 404
    assert client.get("/no/such/route/987654321").status_code == 404

    after = scrape(client)

    def grew(family: str, sample: str | None = None, **labels: str) -> float:
        return value(after, family, sample, **labels) - value(before, family, sample, **labels)

    requests = "pe_search_http_requests"
    assert grew(requests, f"{requests}_total", method="POST", route="/perception_encoder/embed_text", status="200") == 1
    assert grew(requests, f"{requests}_total", method="POST", route="/images", status="200") == 1
    assert grew(requests, f"{requests}_total", method="POST", route="/search", status="200") == 1
    assert grew(requests, f"{requests}_total", method="GET", route="/images/{image_id}", status="404") == 1
    assert grew(requests, f"{requests}_total", method="GET", route="other", status="404") == 1
    routes = {s.labels["route"] for s in after[requests]}
    assert not any("987654321" in route for route in routes), routes
    latency = "pe_search_http_request_duration_seconds"
    assert grew(latency, f"{latency}_count", method="POST", route="/search", status="200") == 1
    assert value(after, latency, f"{latency}_sum", method="POST", route="/search", status="200") > 0

    sizes, seconds = "pe_search_inference_batch_size", "pe_search_inference_seconds"
    assert grew(sizes, f"{sizes}_count", model=TEST_MODEL, kind="text") == 3
    assert grew(sizes, f"{sizes}_sum", model=TEST_MODEL, kind="text") == len(texts) + 1
    assert grew(sizes, f"{sizes}_count", model=TEST_MODEL, kind="image") == 1
    assert grew(sizes, f"{sizes}_sum", model=TEST_MODEL, kind="image") == 1
    assert grew(seconds, f"{seconds}_count", model=TEST_MODEL, kind="text") == 3
    assert grew(seconds, f"{seconds}_sum", model=TEST_MODEL, kind="image") > 0

    assert value(before, "pe_search_images_ingested", "pe_search_images_ingested_total", collection=collection) == 0
    assert value(after, "pe_search_images_ingested", "pe_search_images_ingested_total", collection=collection) == 1

    count = next(c["count"] for c in client.get("/collections").json() if c["name"] == collection)
    assert count == 1
    assert value(after, "pe_search_collection_vectors", collection=collection) == count
    ages = [s for s in after["pe_search_index_checkpoint_age_seconds"] if s.labels["collection"] == collection]
    assert len(ages) == 1 and math.isfinite(ages[0].value) and ages[0].value >= 0
    client.delete(f"/collections/{collection}")
    gone = scrape(client)
    assert all(s.labels["collection"] != collection for s in gone["pe_search_collection_vectors"])


def test_ingest_job_counts_ingested_and_failed(client: TestClient, tmp_path: Path, monkeypatch) -> None:
    collection = fresh_collection()
    make_folder(tmp_path / "photos", count=4)  # and two files that fail (a corrupt JPEG, an empty PNG)
    monkeypatch.setattr(client.app.state.settings, "ingest_roots", str(tmp_path))
    started = client.post("/ingest", json={"source": str(tmp_path / "photos"), "collection": collection})
    assert started.status_code == 202, started.text
    client.app.state.services.jobs.wait_idle(60)  # the single job thread has finished the job
    assert client.get(f"/ingest/{started.json()['id']}").json()["status"] == "done"
    after = scrape(client)
    assert value(after, "pe_search_images_ingested", "pe_search_images_ingested_total", collection=collection) == 4
    assert value(after, "pe_search_images_failed", "pe_search_images_failed_total", collection=collection) == 2
    assert value(after, "pe_search_collection_vectors", collection=collection) == 4
    client.delete(f"/collections/{collection}")


def test_checkpoint_age_resets_only_on_a_successful_save(client: TestClient, monkeypatch) -> None:
    collection = fresh_collection()
    response = client.post(
        "/images",
        files={"file": ("photo.jpg", encode(photo(200, 150, seed=901), "JPEG"), "image/jpeg")},
        data={"collection": collection},
    )
    assert response.status_code == 200, response.text
    store = client.app.state.services.store

    def age() -> float:
        return next(seconds for name, _, seconds in store.index_status() if name == collection)

    opened = age()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(live_module.ckpt, "save", full_disk)
        assert store.checkpoint(collection) is False
    failed = age()
    assert failed >= opened  # a failed save is not a checkpoint
    assert store.checkpoint(collection) is True
    assert 0 <= age() < failed
    client.delete(f"/collections/{collection}")


def test_two_apps_do_not_share_metrics(settings: Settings) -> None:
    first, second = create_app(settings), create_app(settings)
    assert first.state.metrics.registry is not second.state.metrics.registry
    # Without the lifespan: only /metrics and the middleware are needed here.
    one, two = TestClient(first), TestClient(second)
    for _ in range(3):
        one.get("/metrics")
    first.state.metrics.observe_forward(TEST_MODEL, "text", 5, 0.1)
    first.state.metrics.observe_ingest("shared-name", ingested=2)
    scraped_one, scraped_two = scrape(one), scrape(two)
    requests = "pe_search_http_requests"
    assert value(scraped_one, requests, f"{requests}_total", method="GET", route="/metrics", status="200") == 3
    assert value(scraped_two, requests, f"{requests}_total", method="GET", route="/metrics", status="200") == 0
    sizes = "pe_search_inference_batch_size"
    assert value(scraped_one, sizes, f"{sizes}_count", model=TEST_MODEL, kind="text") == 1
    assert value(scraped_two, sizes, f"{sizes}_count", model=TEST_MODEL, kind="text") == 0
    assert (
        value(scraped_two, "pe_search_images_ingested", "pe_search_images_ingested_total", collection="shared-name")
        == 0
    )
    # Nothing went to the process-wide default registry.
    assert not any(family.name.startswith("pe_search_") for family in prometheus_client.REGISTRY.collect())
