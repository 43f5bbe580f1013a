"""Bodies of the search, image, collection and ingest routes."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.api.schemas import ImageObject
from index.filters import Scalar


def storable_json(value: Any) -> Any:
    """Refuse what a JSON column cannot hold back: NaN, infinities, and NUL characters
    (PostgreSQL's jsonb and text refuse U+0000), anywhere in the value, keys included."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("NaN and infinite numbers are not allowed")
    if isinstance(value, str):
        no_nul(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            no_nul(key)
            storable_json(item)
    elif isinstance(value, list):
        for item in value:
            storable_json(item)
    return value


def no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("NUL characters (U+0000) are not allowed")
    return value


Metadata = Annotated[dict[str, Any], AfterValidator(storable_json)]
COLLECTION_NAME_PATTERN = r"^[\w.-]{1,200}$"
CollectionName = Annotated[str, Field(pattern=COLLECTION_NAME_PATTERN, description="Letters, digits, _ . -")]
# SQLite and PostgreSQL integer keys are signed 64-bit.
ImageId = Annotated[int, Field(ge=1, le=2**63 - 1)]


class SearchFilterBody(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    metadata: Annotated[dict[str, Scalar | list[Scalar]], AfterValidator(storable_json)] = Field(
        default_factory=dict, description="key -> value (equality) or list of values (any of them)"
    )
    uri_prefix: Annotated[str, AfterValidator(no_nul)] | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


class SearchRequest(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        allow_inf_nan=False,
        json_schema_extra={
            "examples": [
                {"text": "a dog on a beach", "top_k": 10},
                {"image_id": 42, "top_k": 5, "filter": {"metadata": {"label": ["dog", "cat"]}}},
            ]
        },
    )

    text: str | None = None
    image: ImageObject | None = None
    image_id: ImageId | None = None
    top_k: int = Field(default=10, ge=1)
    collection: CollectionName = "default"
    filter: SearchFilterBody | None = None
    min_score: float | None = Field(default=None, ge=-1, le=1)
    perception_encoder_version_id: str | None = Field(
        default=None, description="Refused with 409 unless the collection's model"
    )
    ef_search: int | None = Field(default=None, ge=1, le=4096, description="HNSW search depth")
    nprobe: int | None = Field(default=None, ge=1, le=65536, description="IVF lists probed")


class SearchHit(BaseModel):
    id: int
    score: float
    uri: str
    width: int
    height: int
    format: str | None
    metadata: dict[str, Any]
    file_url: str


class SearchResponse(BaseModel):
    results: list[SearchHit]
    collection: str
    time: float


class ImageRecord(BaseModel):
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


class AddImageRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"image": {"type": "url", "value": "https://example.com/cat.jpg"}, "metadata": {"label": "cat"}}
            ]
        }
    )

    image: ImageObject
    metadata: Metadata = Field(default_factory=dict)
    collection: CollectionName = "default"
    perception_encoder_version_id: str | None = None


class UploadFields(BaseModel):
    """The form fields beside a multipart `file`."""

    metadata: Metadata = Field(default_factory=dict)
    collection: CollectionName = "default"
    perception_encoder_version_id: str | None = None


class AddImageResponse(BaseModel):
    id: int
    created: bool = Field(description="False when the same bytes were already stored: the id is the existing one")
    collection: str


class PatchImageRequest(BaseModel):
    metadata: Metadata = Field(description="Keys to set; a null value removes the key")


class CollectionOut(BaseModel):
    name: str
    model: str
    dim: int
    count: int
    indexed: int = Field(description="Vectors in the live index; equals count once caught up")
    metric: str
    index_type: str
    live_index: str
    index_params: dict[str, Any]
    created_at: str


class CreateCollectionRequest(BaseModel):
    name: CollectionName
    perception_encoder_version_id: str | None = Field(default=None, description="Default: the server's model")
    index_type: Literal["auto", "flat", "hnsw", "ivfpq"] = "auto"


class IngestRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"source": "/srv/photos", "kind": "folder", "collection": "photos"}]}
    )

    source: Annotated[str, AfterValidator(no_nul)] = Field(
        description="A server-side folder or manifest under PE_SEARCH_INGEST_ROOTS"
    )
    kind: Literal["folder", "manifest", "urls"] = "folder"
    collection: CollectionName = "default"
    column: str | None = Field(default=None, description="Manifest column holding the path or URL")
    perception_encoder_version_id: str | None = None


class IngestJobOut(BaseModel):
    id: str
    source: str
    collection: str
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    summary: dict[str, Any]
    error: str | None
    created_at: str
    finished_at: str | None
