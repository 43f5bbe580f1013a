"""Bodies of the near-duplicate routes."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.api.store_schemas import ImageRecord


class DuplicateGroupOut(BaseModel):
    images: list[ImageRecord] = Field(description="The group's images, by id")
    min_score: float = Field(description="The lowest cosine among the pairs that joined the group")
    max_score: float
    keep: int | None = Field(description="The image the resolve rule keeps; null without a rule")
    extras: list[int] = Field(
        description="What a resolve deletes: the members within the threshold of the keeper itself (a member "
        "joined only through others stays)"
    )


class SharedContentOut(BaseModel):
    image: ImageRecord
    uris: list[str] = Field(description="Every place these exact bytes (one sha256) were ingested from")


class DuplicatesResponse(BaseModel):
    collection: str
    threshold: float
    groups: list[DuplicateGroupOut] = Field(description="Largest groups first, at most `limit`")
    total_groups: int
    exact: list[SharedContentOut] = Field(description="Identical files, stored once")
    deleted: int = Field(default=0, description="Images deleted by a resolve")
    time: float
