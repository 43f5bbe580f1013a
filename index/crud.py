"""Keyword-only data functions; the caller owns the session and the transaction."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from sqlalchemy import Integer, any_, bindparam, cast, delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from index.dto import ImageRecord, NewImage
from index.errors import CollectionNotFoundError, MissingVectorError
from index.filters import SearchFilter, conditions
from index.models import Collection, Failure, Image, ImageVector, Source, Tombstone, utcnow

# First key of the advisory locks that serialise a collection's writers (the second is its id).
_WRITER_LOCK_SPACE = 0x7065  # "pe"


def lock_collection_writes(session: Session, *, collection_ids: Iterable[int]) -> None:
    """Hold the collections' writer locks until this transaction ends (PostgreSQL; SQLite needs none).

    Indexes catch up by id watermark: every row above the last id replayed is new. That holds
    only if, within a collection, ids become visible in id order. SQLite has one writer at a
    time, so it does. PostgreSQL hands out sequence ids at INSERT, and concurrent transactions
    may commit out of order: a reader could see id 11, move its watermark past 10, and miss 10
    forever when it commits. With this lock taken before any id is drawn and held to commit,
    a collection's transactions run one after another, so ids commit in order (the sequences
    keep the default CACHE 1, so ids are drawn in order too). Tombstones are covered the same way.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    for collection_id in sorted(set(collection_ids)):  # one order everywhere: no deadlocks
        session.execute(
            select(func.pg_advisory_xact_lock(cast(_WRITER_LOCK_SPACE, Integer), cast(collection_id, Integer)))
        )


def get_collection(session: Session, *, name: str) -> Collection:
    collection = session.scalar(select(Collection).where(Collection.name == name))
    if collection is None:
        raise CollectionNotFoundError(name)
    return collection


def count_images(session: Session, *, collection_id: int) -> int:
    return session.scalar(select(func.count()).select_from(Image).where(Image.collection_id == collection_id)) or 0


def sync_state(session: Session, *, collection_id: int) -> tuple[int, int, int]:
    """(newest image id, newest tombstone id, index generation): what a live index must reflect."""
    image = select(func.max(Image.id)).where(Image.collection_id == collection_id).scalar_subquery()
    tomb = select(func.max(Tombstone.id)).where(Tombstone.collection_id == collection_id).scalar_subquery()
    row = session.execute(
        select(image, tomb, Collection.generation).where(Collection.id == collection_id)
    ).one_or_none()
    if row is None:
        raise CollectionNotFoundError(str(collection_id))
    return row[0] or 0, row[1] or 0, row[2]


def sources_by_uri(session: Session, *, collection_id: int, uris: Sequence[str]) -> dict[str, Source]:
    rows = session.scalars(select(Source).where(Source.collection_id == collection_id, Source.uri.in_(uris)))
    return {row.uri: row for row in rows}


def ids_by_sha(session: Session, *, collection_id: int, shas: Iterable[str]) -> dict[str, int]:
    rows = session.execute(
        select(Image.sha256, Image.id).where(Image.collection_id == collection_id, Image.sha256.in_(list(shas)))
    )
    return {sha: image_id for sha, image_id in rows}


def add_batch(session: Session, *, collection_id: int, items: Sequence[NewImage]) -> list[tuple[int, bool]]:
    """Insert new images and point every item's source at its image, in a few set-based statements.

    Returns (image id, created) per item; content already stored (same sha256) is not inserted again.
    """
    lock_collection_writes(session, collection_ids=[collection_id])
    known = ids_by_sha(session, collection_id=collection_id, shas={i.sha256 for i in items})
    fresh: dict[str, NewImage] = {}
    for item in items:
        if item.sha256 not in known:
            fresh.setdefault(item.sha256, item)
    unembedded = [sha for sha, item in fresh.items() if item.vector is None]
    if unembedded:
        # Content thought stored when the batch was embedded, deleted since: the caller embeds it and retries.
        raise MissingVectorError(unembedded)
    if fresh:
        rows = [_image_row(collection_id, item) for item in fresh.values()]
        inserted = session.execute(
            insert(Image).returning(Image.id, Image.sha256, sort_by_parameter_order=True), rows
        ).all()
        known.update({sha: image_id for image_id, sha in inserted})
        session.execute(
            insert(ImageVector),
            [{"image_id": image_id, "vector": _vector_bytes(fresh[sha].vector)} for image_id, sha in inserted],
        )
    created = {known[sha] for sha in fresh}
    _point_sources(session, collection_id=collection_id, items=items, image_ids=[known[i.sha256] for i in items])
    seen: set[int] = set()
    results = []
    for item in items:
        image_id = known[item.sha256]
        results.append((image_id, image_id in created and image_id not in seen))
        seen.add(image_id)
    return results


def _image_row(collection_id: int, item: NewImage) -> dict[str, Any]:
    now = utcnow()
    return {
        "collection_id": collection_id,
        "sha256": item.sha256,
        "uri": item.uri,
        "width": item.width,
        "height": item.height,
        "format": item.format,
        "byte_size": item.byte_size,
        "meta": item.meta,
        "created_at": item.created_at or now,
        "updated_at": now,
    }


def _vector_bytes(vector: np.ndarray | None) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def _point_sources(
    session: Session, *, collection_id: int, items: Sequence[NewImage], image_ids: Sequence[int]
) -> None:
    uris = [item.uri for item in items]
    existing = sources_by_uri(session, collection_id=collection_id, uris=uris)
    new_rows = {}
    left: set[int] = set()
    for item, image_id in zip(items, image_ids, strict=True):
        values = {"image_id": image_id, "root": item.root, "size": item.size, "mtime": item.mtime, "etag": item.etag}
        if item.uri in existing:
            source = existing[item.uri]
            if source.image_id != image_id:
                left.add(source.image_id)
            for key, value in values.items():
                setattr(source, key, value)
        else:
            new_rows[item.uri] = {"collection_id": collection_id, "uri": item.uri, **values}
    if new_rows:
        session.execute(insert(Source), list(new_rows.values()))
    session.execute(delete(Failure).where(Failure.collection_id == collection_id, Failure.uri.in_(uris)))
    if left:
        session.flush()
        # An image whose every source now holds other content (a file changed in place) is gone.
        still_used = set(session.scalars(select(Source.image_id).where(Source.image_id.in_(left))))
        delete_images(session, image_ids=sorted(left - still_used))


def record_failure(session: Session, *, collection_id: int, uri: str, reason: str) -> None:
    existing = session.scalar(select(Failure).where(Failure.collection_id == collection_id, Failure.uri == uri))
    if existing is None:
        session.add(Failure(collection_id=collection_id, uri=uri, reason=reason))
    else:
        existing.reason = reason


def delete_images(session: Session, *, image_ids: Sequence[int]) -> dict[int, list[int]]:
    """Delete images (their sources cascade) and leave tombstones; returns ids by collection."""
    rows = session.execute(select(Image.id, Image.collection_id).where(Image.id.in_(list(image_ids)))).all()
    lock_collection_writes(session, collection_ids={collection_id for _, collection_id in rows})
    by_collection: dict[int, list[int]] = {}
    for image_id, collection_id in rows:
        by_collection.setdefault(collection_id, []).append(image_id)
        session.add(Tombstone(collection_id=collection_id, image_id=image_id))
    session.execute(delete(Source).where(Source.image_id.in_([r[0] for r in rows])))
    session.execute(delete(Image).where(Image.id.in_([r[0] for r in rows])))
    return by_collection


def merge_metadata(session: Session, *, image_id: int, patch: dict[str, Any]) -> None:
    """Apply an RFC 7396 merge patch (null removes a key, objects merge) without losing concurrent updates."""
    if session.get_bind().dialect.name == "sqlite":
        # json_patch is RFC 7396 merge-patch, applied inside the UPDATE.
        session.execute(
            update(Image)
            .where(Image.id == image_id)
            .values(meta=func.json_patch(Image.meta, func.json(json.dumps(patch))), updated_at=utcnow())
        )
        return
    # Elsewhere the merge runs here, on the row locked until commit, so two patches cannot interleave.
    current = session.execute(select(Image.meta).where(Image.id == image_id).with_for_update()).scalar_one()
    session.execute(
        update(Image).where(Image.id == image_id).values(meta=merge_patch(current, patch), updated_at=utcnow())
    )


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396: the same result SQLite's json_patch gives."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def tombstones_between(session: Session, *, collection_id: int, after_id: int, up_to: int) -> list[int]:
    query = select(Tombstone.image_id).where(
        Tombstone.collection_id == collection_id, Tombstone.id > after_id, Tombstone.id <= up_to
    )
    return list(session.scalars(query))


def filtered_ids(session: Session, *, collection_id: int, search_filter: SearchFilter) -> np.ndarray:
    dialect = session.get_bind().dialect.name
    query = select(Image.id).where(Image.collection_id == collection_id, *conditions(search_filter, dialect=dialect))
    return np.fromiter(session.scalars(query), dtype=np.int64)


# An image's record, read as columns: no ORM object per row, and never the vector blob.
_RECORD_COLUMNS = (
    Image.id,
    Image.collection_id,
    Image.sha256,
    Image.uri,
    Image.width,
    Image.height,
    Image.format,
    Image.byte_size,
    Image.meta,
    Image.created_at,
    Image.updated_at,
)


def _record(row: Sequence[Any]) -> ImageRecord:
    return ImageRecord(
        id=row[0],
        collection_id=row[1],
        sha256=row[2],
        uri=row[3],
        width=row[4],
        height=row[5],
        format=row[6],
        byte_size=row[7],
        meta=row[8] or {},
        created_at=row[9],
        updated_at=row[10],
    )


def image_record(session: Session, *, image_id: int) -> ImageRecord | None:
    row = session.execute(select(*_RECORD_COLUMNS).where(Image.id == image_id)).one_or_none()
    return None if row is None else _record(row)


def image_records(session: Session, *, image_ids: Sequence[int]) -> dict[int, ImageRecord]:
    # Through the session's Core connection: these are plain columns, and the ORM's result
    # machinery cost about as much as the query itself for a search's 100 hits (docs/BENCHMARKS.md).
    ids = [int(i) for i in image_ids]
    if session.get_bind().dialect.name == "postgresql":
        # One array parameter: PostgreSQL parses and plans `= ANY($1)` far faster than 100 IN literals.
        match = Image.id == any_(bindparam("ids", ids, type_=ARRAY(Integer)))
    else:
        match = Image.id.in_(ids)
    rows = session.connection().execute(select(*_RECORD_COLUMNS).where(match))
    return {row[0]: _record(row) for row in rows}


def failures(session: Session, *, collection_id: int) -> list[Failure]:
    return list(session.scalars(select(Failure).where(Failure.collection_id == collection_id).order_by(Failure.id)))


def images_after(session: Session, *, collection_id: int, after_id: int = 0, limit: int = 1000) -> list[ImageRecord]:
    query = (
        select(*_RECORD_COLUMNS)
        .where(Image.collection_id == collection_id, Image.id > after_id)
        .order_by(Image.id)
        .limit(limit)
    )
    return [_record(row) for row in session.execute(query)]
