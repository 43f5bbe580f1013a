"""Prometheus metrics: one registry per app, built by `create_app`; nothing here is global.

Pushed by hooks (the request middleware, the encoder's `on_forward`, the ingestor's
`on_batch`, the upload route) or, for the vector store, read at scrape time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from index.store import VectorStore

log = logging.getLogger(__name__)

PREFIX = "pe_search_"
# Items per forward pass: the inference batch is a power of two (PE_SEARCH_INFERENCE_BATCH, 32 by default).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# A pass of a large model on CPU can take tens of seconds.
INFERENCE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _StoreCollector:
    """Vectors and checkpoint age per collection, read from the store at each scrape."""

    def __init__(self) -> None:
        self.store: VectorStore | None = None

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                f"{PREFIX}collection_vectors", "Vectors in the collection's live index.", labels=["collection"]
            ),
            GaugeMetricFamily(
                f"{PREFIX}index_checkpoint_age_seconds",
                "Seconds since the collection's index was last checkpointed to disk "
                "(or since it was opened, if never).",
                labels=["collection"],
            ),
        )

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        vectors, age = self._families()
        store = self.store
        if store is not None:
            try:
                for name, count, seconds in store.index_status():
                    vectors.add_metric([name], count)
                    age.add_metric([name], seconds)
            except Exception:  # noqa: BLE001 - a failed read must not fail the whole scrape
                log.exception("Could not read the vector store for /metrics")
        yield vectors
        yield age


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        http, model, collection = ["method", "route", "status"], ["model", "kind"], ["collection"]
        self.requests = Counter(f"{PREFIX}http_requests", "HTTP requests.", http, registry=r)
        self.request_seconds = Histogram(
            f"{PREFIX}http_request_duration_seconds", "HTTP request latency.", http, registry=r
        )
        self.batch_size = Histogram(
            f"{PREFIX}inference_batch_size", "Items per model forward pass.", model, buckets=BATCH_BUCKETS, registry=r
        )
        self.inference_seconds = Histogram(
            f"{PREFIX}inference_seconds",
            "Seconds per model forward pass.",
            model,
            buckets=INFERENCE_BUCKETS,
            registry=r,
        )
        self.ingested = Counter(
            f"{PREFIX}images_ingested",
            "Images accepted into a collection: uploads, and ingest items stored or matched to stored content.",
            collection,
            registry=r,
        )
        self.failed = Counter(
            f"{PREFIX}images_failed", "Ingest items that could not be read or decoded.", collection, registry=r
        )
        self._store = _StoreCollector()
        r.register(self._store)

    def watch_store(self, store: VectorStore | None) -> None:
        """The store to report on at scrape time; None once it closes."""
        self._store.store = store

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        labels = (method, route, str(status))
        self.requests.labels(*labels).inc()
        self.request_seconds.labels(*labels).observe(seconds)

    def observe_forward(self, model: str, kind: str, size: int, seconds: float) -> None:
        self.batch_size.labels(model, kind).observe(size)
        self.inference_seconds.labels(model, kind).observe(seconds)

    def observe_ingest(self, collection: str, ingested: int = 0, failed: int = 0) -> None:
        # Touch both series, so a collection shows 0 failures rather than no series at all.
        self.ingested.labels(collection).inc(ingested)
        self.failed.labels(collection).inc(failed)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
