"""Bodies of the search, image, collection and ingest routes."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.api.schemas import ImageObject
from app.api.urls import file_url
from app.services.query_parts import QueryPart
from index.dto import ImageRecord as StoredImage
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
# Above any PE-Core width (G14 is 1280): a longer vector is refused before it is parsed into memory.
MAX_VECTOR_DIM = 8192


class SearchFilterBody(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    metadata: Annotated[dict[str, Scalar | list[Scalar]], AfterValidator(storable_json)] = Field(
        default_factory=dict, description="key -> value (equality) or list of values (any of them)"
    )
    uri_prefix: Annotated[str, AfterValidator(no_nul)] | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


class QueryPartBody(BaseModel):
    """One term of a composed query: exactly one of text, image, image_id or vector, and a weight."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    text: Annotated[str, Field(max_length=100_000)] | None = None
    image: ImageObject | None = None
    image_id: ImageId | None = None
    vector: Annotated[list[float], Field(max_length=MAX_VECTOR_DIM)] | None = None
    weight: float = Field(default=1.0, ge=-100, le=100, description="In positive and negative, its size only")

    def to_part(self, sign: float | None = None) -> QueryPart:
        weight = self.weight if sign is None else sign * abs(self.weight)
        return QueryPart(
            weight=weight,
            text=self.text,
            image=self.image.to_ref() if self.image else None,
            image_id=self.image_id,
            vector=tuple(self.vector) if self.vector is not None else None,
        )


# A bare string in positive / negative is a text.
PartItem = Annotated[str, Field(max_length=100_000)] | QueryPartBody
PartList = Annotated[list[PartItem], Field(max_length=256)]


def _as_part(item: PartItem, sign: float) -> QueryPart:
    return QueryPart(weight=sign, text=item) if isinstance(item, str) else item.to_part(sign)


class SearchRequest(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        allow_inf_nan=False,
        json_schema_extra={
            "examples": [
                {"text": "a dog on a beach", "top_k": 10},
                {"image_id": 42, "top_k": 5, "filter": {"metadata": {"label": ["dog", "cat"]}}},
                {"positive": ["a dog", "on a beach"], "negative": ["people"], "top_k": 10},
                {"parts": [{"text": "a red car", "weight": 1.0}, {"image_id": 7, "weight": 0.5}], "top_k": 10},
                {"vector": [0.1] * 8, "top_k": 5},
                {"text": "sunset", "top_k": 24, "order": "-created_at", "candidates": 200},
                {"text": "sunset", "top_k": 24, "offset": 24},
                {"cursor": "eJyrVkrOzytJzSvRUcpJLS5RslJQUgIAU0wHtQ.AAAAAAAAAAAAAAAAAAAAAA"},
            ]
        },
    )

    text: str | None = None
    image: ImageObject | None = None
    image_id: ImageId | None = None
    vector: Annotated[list[float], Field(max_length=MAX_VECTOR_DIM)] | None = Field(
        default=None, description="A query embedding of the collection's dimension (normalised here)"
    )
    positive: PartList = Field(default_factory=list, description="Texts or parts to move towards")
    negative: PartList = Field(default_factory=list, description="Texts or parts to move away from")
    parts: Annotated[list[QueryPartBody], Field(max_length=256)] = Field(
        default_factory=list, description="Weighted parts; a negative weight moves away"
    )
    top_k: int = Field(default=10, ge=1, description="Results per page")
    offset: int = Field(default=0, ge=0, le=1_000_000, description="Results to skip (a page's start)")
    order: Literal["score", "created_at", "-created_at"] = Field(
        default="score", description="created_at orders the best `candidates` matches by date"
    )
    candidates: int | None = Field(default=None, ge=1, description="Matches a date order sorts (default 200)")
    cursor: Annotated[str, Field(max_length=1_000_000)] | None = Field(
        default=None, description="next_cursor of the page before: the next page, without re-encoding"
    )
    collection: CollectionName | None = Field(default=None, description="Default: `default`, or the cursor's")
    filter: SearchFilterBody | None = None
    min_score: float | None = Field(default=None, ge=-1, le=1)
    perception_encoder_version_id: str | None = Field(
        default=None, description="Refused with 409 unless the collection's model"
    )
    ef_search: int | None = Field(default=None, ge=1, le=4096, description="HNSW search depth")
    nprobe: int | None = Field(default=None, ge=1, le=65536, description="IVF lists probed")
    rerank: int | None = Field(
        default=None, ge=1, le=100, description="IVF-PQ: top_k x rerank candidates re-scored exactly"
    )

    def query_parts(self) -> tuple[QueryPart, ...]:
        return (
            *(_as_part(item, 1.0) for item in self.positive),
            *(_as_part(item, -1.0) for item in self.negative),
            *(part.to_part() for part in self.parts),
        )


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
    offset: int = Field(description="Where this page starts in the ranking")
    next_cursor: str | None = Field(description="Send as `cursor` for the next page; null on the last one")


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

    @classmethod
    def of(cls, image: StoredImage, collection: str) -> ImageRecord:
        return cls(
            id=image.id,
            collection=collection,
            sha256=image.sha256,
            uri=image.uri,
            width=image.width,
            height=image.height,
            format=image.format,
            byte_size=image.byte_size,
            metadata=image.meta,
            file_url=file_url(image.id),
            created_at=image.created_at,
            updated_at=image.updated_at,
        )


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
    tuned: dict[str, Any] = Field(
        default_factory=dict,
        description="Search settings auto-tuning chose after the last build, with the recall and p50 it measured",
    )
    created_at: str


class CreateCollectionRequest(BaseModel):
    name: CollectionName
    perception_encoder_version_id: str | None = Field(default=None, description="Default: the server's model")
    index_type: Literal["auto", "flat", "hnsw", "ivfpq"] = "auto"
