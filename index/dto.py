"""What the store hands out and takes in: plain frozen records, never ORM rows bound to a session."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np


@dataclass(frozen=True)
class CollectionInfo:
    id: int
    name: str
    model: str
    dim: int
    metric: str
    index_type: str
    live_index: str
    index_params: dict[str, Any]
    count: int
    indexed: int
    created_at: str
    # Bumped by each rebuild or model switch: what a search cursor is valid for.
    generation: int = 0
    # What auto-tuning chose after the last build (index/tuning.py): params, recall, p50_ms, met...
    tuned: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    """One scored id from the index: the cosine of a stored vector to the query."""

    id: int
    score: float


@dataclass(frozen=True)
class ImageRecord:
    """A stored image's metadata row, without its vector (`VectorStore.vector` reads that)."""

    id: int
    collection_id: int
    sha256: str
    uri: str
    width: int
    height: int
    format: str | None
    byte_size: int
    meta: dict[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass
class NewImage:
    """An image to add; `vector` may be None for content the store already holds (same sha256)."""

    sha256: str
    uri: str
    width: int
    height: int
    format: str | None
    byte_size: int
    vector: np.ndarray | None
    meta: dict[str, Any] = field(default_factory=dict)
    root: str | None = None
    size: int | None = None
    mtime: float | None = None
    # An object's version tag (S3 ETag), compared with its size to skip unchanged objects.
    etag: str | None = None
    # Kept from an import, so date order survives a move; new images are stamped when committed.
    created_at: datetime | None = None


@dataclass(frozen=True)
class KnownSource:
    """What the store remembers of a place already ingested, to tell whether it changed."""

    image_id: int
    size: int | None
    mtime: float | None
    etag: str | None
