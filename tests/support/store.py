"""Vector stores on a real database and FAISS indexes, and synthetic embedding-like vectors to fill them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from index.db import create_db_engine
from index.dto import NewImage
from index.store import VectorStore
from tests.support.constants import TEST_MODEL

# Synthetic vectors are small; the collections still record the model under test.
DIM = 32
MODEL = TEST_MODEL


def open_store(root: Path, url: str | None = None) -> VectorStore:
    """A store with its indexes under root; its database a SQLite file there unless a URL is given."""
    url = url or f"sqlite:///{root / 'meta.db'}"
    return VectorStore(engine=create_db_engine(url), index_dir=root / "indexes").open()


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    """Unit vectors in clusters, shaped like real embeddings rather than uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(n // 100, 4), dim))
    return unit(centres[rng.integers(0, len(centres), n)] + 0.35 * rng.normal(size=(n, dim)))


def items(vectors: np.ndarray, start: int = 0, meta=None) -> list[NewImage]:
    return [
        NewImage(
            sha256=hashlib.sha256(f"img{start + i}".encode()).hexdigest(),
            uri=f"/photos/{start + i}.jpg",
            width=10,
            height=10,
            format="JPEG",
            byte_size=100,
            vector=v,
            meta=meta(start + i) if meta else {},
        )
        for i, v in enumerate(vectors)
    ]


def add(store: VectorStore, collection_id: int, vectors: np.ndarray, start: int = 0, meta=None) -> list[int]:
    return [image_id for image_id, _ in store.add_images(collection_id, items(vectors, start, meta))]
