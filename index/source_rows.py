"""SQL over `sources` for folders kept in sync: forgetting deleted files, and listing a folder's known files."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from index.crud import delete_images, lock_collection_writes, sources_by_uri
from index.models import Failure, Source


def remove_sources(session: Session, *, collection_id: int, uris: Sequence[str]) -> tuple[int, list[int]]:
    """Forget these places (a watched file deleted); an image left with no source is deleted too.

    Returns (sources removed, image ids deleted).
    """
    lock_collection_writes(session, collection_ids=[collection_id])
    found = sources_by_uri(session, collection_id=collection_id, uris=uris)
    session.execute(delete(Failure).where(Failure.collection_id == collection_id, Failure.uri.in_(list(uris))))
    if not found:
        return 0, []
    touched = {source.image_id for source in found.values()}
    session.execute(delete(Source).where(Source.id.in_([source.id for source in found.values()])))
    still_used = set(session.scalars(select(Source.image_id).where(Source.image_id.in_(touched))))
    orphans = sorted(touched - still_used)
    delete_images(session, image_ids=orphans)
    return len(found), orphans


def source_uris(session: Session, *, collection_id: int, under: str, after: str = "", limit: int = 1000) -> list[str]:
    """The uris under the folder `under` (its path and a separator), in uri order after `after`, a page at a time."""
    prefix = under.rstrip("/") + "/"
    pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    rows = session.scalars(
        select(Source.uri)
        .where(Source.collection_id == collection_id, Source.uri.like(pattern, escape="\\"), Source.uri > after)
        .order_by(Source.uri)
        .limit(limit)
    )
    return list(rows)
