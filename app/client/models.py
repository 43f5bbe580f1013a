"""What the client returns: plain dataclasses parsed from the server's JSON, and its one error type."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

ImageInput = str | Path | bytes
"""An image: a local path (str or Path), raw file bytes, or an http(s) URL string the server fetches."""

IndexType = Literal["auto", "flat", "hnsw", "ivfpq"]
IngestKind = Literal["folder", "manifest", "urls"]
FINISHED_STATUSES = frozenset({"done", "failed", "cancelled"})


class PESearchAPIError(Exception):
    """The server answered with a non-2xx status; `message` is its explanation."""

    def __init__(self, status_code: int, message: str, detail: Any = None) -> None:
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code
        self.message = message
        self.detail = detail  # the raw 422 `detail` list, when there is one


@dataclass(frozen=True)
class SearchHit:
    id: int
    score: float
    uri: str
    width: int
    height: int
    format: str | None
    metadata: dict[str, Any]
    file_url: str  # absolute: the server's `/images/{id}/file` joined to api_url


@dataclass(frozen=True)
class AddedImage:
    id: int
    created: bool  # False when the same bytes were already stored: `id` is the existing image
    collection: str


@dataclass(frozen=True)
class ImageRecord:
    id: int
    collection: str
    sha256: str
    uri: str
    width: int
    height: int
    format: str | None
    byte_size: int
    metadata: dict[str, Any]
    file_url: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Collection:
    name: str
    model: str
    dim: int
    count: int
    indexed: int
    metric: str
    index_type: str
    live_index: str
    index_params: dict[str, Any]
    created_at: datetime
    tuned: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class IngestJob:
    id: str
    source: str
    collection: str
    status: str  # queued, running, done, failed or cancelled
    summary: dict[str, Any]  # added, unchanged, duplicates, failed, failures, seconds...
    error: str | None
    created_at: datetime
    finished_at: datetime | None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def parse_collection(raw: dict[str, Any]) -> Collection:
    return Collection(
        name=raw["name"],
        model=raw["model"],
        dim=raw["dim"],
        count=raw["count"],
        indexed=raw["indexed"],
        metric=raw["metric"],
        index_type=raw["index_type"],
        live_index=raw["live_index"],
        index_params=raw.get("index_params") or {},
        created_at=datetime.fromisoformat(raw["created_at"]),
        tuned=raw.get("tuned") or {},
    )


def parse_job(raw: dict[str, Any]) -> IngestJob:
    return IngestJob(
        id=raw["id"],
        source=raw["source"],
        collection=raw["collection"],
        status=raw["status"],
        summary=raw.get("summary") or {},
        error=raw.get("error"),
        created_at=datetime.fromisoformat(raw["created_at"]),
        finished_at=_time(raw.get("finished_at")),
    )


@dataclass(frozen=True)
class SearchPage:
    hits: list[SearchHit]
    collection: str
    offset: int
    next_cursor: str | None  # pass to `search(cursor=...)` for the next page; None on the last one


@dataclass(frozen=True)
class DuplicateGroup:
    images: list[ImageRecord]
    min_score: float
    max_score: float
    keep: int | None  # the image a resolve rule keeps; None without a rule
    extras: list[int]  # what a resolve deletes: the members within the threshold of the keeper itself


@dataclass(frozen=True)
class SharedContent:
    image: ImageRecord
    uris: list[str]  # every place the same bytes were ingested from


@dataclass(frozen=True)
class DuplicateReport:
    collection: str
    threshold: float
    groups: list[DuplicateGroup]
    total_groups: int
    exact: list[SharedContent]
    deleted: int
