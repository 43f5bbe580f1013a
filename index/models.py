"""SQLAlchemy models: SQLite or PostgreSQL is the source of truth, vectors included.

Vectors live in `image_vectors`, apart from the image rows: a metadata read of 100 hits then
touches about 200-byte rows instead of rows carrying 4 KB each (issue #14).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Datetimes stored as UTC and read back timezone-aware: SQLite keeps no offset, so an
    aware value is converted on the way in (naive ones are taken as UTC) and tagged on the way out."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


# jsonb on PostgreSQL: metadata filters are containment tests (`@>`), which plain json lacks.
MetadataJSON = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    pass


class Collection(Base):
    __tablename__ = "collections"
    # Ids never reused: an index directory left by a deleted collection can never be taken for a new one's.
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    model: Mapped[str] = mapped_column(String(64))
    dim: Mapped[int] = mapped_column(Integer)
    metric: Mapped[str] = mapped_column(String(16), default="cosine")
    index_type: Mapped[str] = mapped_column(String(16), default="auto")
    index_params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Bumped by every rebuild and model switch, so other processes know their index is stale.
    generation: Mapped[int] = mapped_column(Integer, default=0)
    # Search parameters the last build's auto-tuning chose (index/ann/tuning.py); a query's own knobs win.
    tuned_params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Image(Base):
    __tablename__ = "images"
    # AUTOINCREMENT: ids are never reused after a delete, so an index checkpoint's
    # id watermark always means "every row above this is new".
    __table_args__ = (
        UniqueConstraint("collection_id", "sha256", name="uq_images_collection_sha256"),
        # Metadata filters (`@>` only) on PostgreSQL; none on SQLite (migration 0005).
        Index(
            "ix_images_metadata_gin",
            "metadata",
            postgresql_using="gin",
            postgresql_ops={"metadata": "jsonb_path_ops"},
        ).ddl_if(dialect="postgresql"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    uri: Mapped[str] = mapped_column(Text)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    format: Mapped[str | None] = mapped_column(String(16))
    byte_size: Mapped[int] = mapped_column(Integer)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", MetadataJSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class ImageVector(Base):
    """An image's float32 embedding (little-endian bytes), one row per image."""

    __tablename__ = "image_vectors"

    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class Source(Base):
    """Every place an image was ingested from, so re-runs skip unchanged files without hashing."""

    __tablename__ = "sources"
    __table_args__ = (UniqueConstraint("collection_id", "uri", name="uq_sources_collection_uri"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    uri: Mapped[str] = mapped_column(Text)
    root: Mapped[str | None] = mapped_column(Text)
    size: Mapped[int | None] = mapped_column(Integer)
    mtime: Mapped[float | None] = mapped_column(Float)
    # Objects in buckets: their ETag stands in for the mtime (revision 0006).
    etag: Mapped[str | None] = mapped_column(String(200))


class Tombstone(Base):
    """Deleted image ids, in order, so an index checkpoint can replay deletions made after it."""

    __tablename__ = "tombstones"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    image_id: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Failure(Base):
    """An item an ingest could not add, with the reason; the latest attempt per uri."""

    __tablename__ = "failures"
    __table_args__ = (UniqueConstraint("collection_id", "uri", name="uq_failures_collection_uri"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"))
    uri: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class StagedVector(Base):
    """A vector from another model, waiting for the whole collection before it replaces the current one."""

    __tablename__ = "staged_vectors"

    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class IngestJob(Base):
    """A server-side ingest job: what it reads, how far it got, how it ended (revision 0006)."""

    __tablename__ = "ingest_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    collection: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(Text)
    # What the run needs besides the source: manifest column, model, near-duplicate policy, changed paths.
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), index=True)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    # Runs started: 2 or more means it was resumed after a restart.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # A DELETE while it ran: kept, so a restart before the batch ends does not run the job again.
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


def schema_of(dialect: str) -> Callable[[Any, str | None, str, bool, Any], bool]:
    """Alembic's `include_object` for one database: leaves out what is declared for another dialect only
    (`Index(...).ddl_if(dialect=...)`, such as the PostgreSQL GIN index), which Alembic's comparison ignores."""

    def include(obj: Any, name: str | None, kind: str, reflected: bool, compare_to: Any) -> bool:
        condition = getattr(obj, "_ddl_if", None)
        return not (kind == "index" and condition is not None and condition.dialect not in (None, dialect))

    return include
