"""The store's image methods: add, read, edit and delete images; mixed into `VectorStore`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from index import crud, source_rows, vector_rows
from index.dto import ImageRecord, KnownSource, NewImage
from index.errors import ImageNotFoundError, ReadOnlyError
from index.live import LiveIndexes
from index.models import Image, Source

_IN_CHUNK = 10_000


class ImageMethods:
    """Needs the store's sessions, live indexes and read-only flag."""

    sessions: sessionmaker[Session]
    live: LiveIndexes
    read_only: bool

    def _writable(self, what: str) -> None:
        if self.read_only:
            raise ReadOnlyError(what)

    def iter_images(self, collection_id: int, batch: int = 256) -> Iterator[list[ImageRecord]]:
        """A collection's images in id order, in batches."""
        last = 0
        while True:
            with self.sessions() as session:
                rows = crud.images_after(session, collection_id=collection_id, after_id=last, limit=batch)
            if not rows:
                return
            yield rows
            last = rows[-1].id

    def iter_with_vectors(
        self, collection_id: int, *, up_to: int, batch: int = 10_000
    ) -> Iterator[tuple[list[ImageRecord], np.ndarray]]:
        """(records, their vectors as rows) in id order up to a watermark, in batches: what an export reads."""
        with self.sessions() as session:
            for ids, vectors in vector_rows.iter_vectors(
                session, collection_id=collection_id, up_to=up_to, batch=batch
            ):
                records = crud.image_records(session, image_ids=ids.tolist())
                # An image deleted between the two reads drops out of the batch.
                keep = np.fromiter((int(i) in records for i in ids), dtype=bool, count=len(ids))
                yield [records[int(i)] for i in ids[keep]], vectors[keep]

    def id_watermark(self, collection_id: int) -> int:
        """The collection's largest image id so far (0 when empty)."""
        with self.sessions() as session:
            return crud.sync_state(session, collection_id=collection_id)[0]

    def known_sources(self, collection_id: int, uris: Sequence[str]) -> dict[str, KnownSource]:
        """What is remembered of each uri already ingested into the collection."""
        with self.sessions() as session:
            rows = crud.sources_by_uri(session, collection_id=collection_id, uris=list(uris))
            return {uri: KnownSource(s.image_id, s.size, s.mtime, s.etag) for uri, s in rows.items()}

    def existing_shas(self, collection_id: int, shas: Sequence[str]) -> dict[str, int]:
        with self.sessions() as session:
            return crud.ids_by_sha(session, collection_id=collection_id, shas=shas)

    def add_images(
        self, collection_id: int, items: Sequence[NewImage], failures: Sequence[tuple[str, str]] = ()
    ) -> list[tuple[int, bool]]:
        """Commit a batch in one transaction: new images, or new sources for known content.

        Returns (image id, created) per item. Then the live index takes the new vectors.
        """
        self._writable("add images")
        live = self.live.loaded(collection_id)
        wrong = [item.uri for item in items if item.vector is not None and len(item.vector) != live.index.dim]
        if wrong:
            raise ValueError(f"vectors of the wrong dimension for this collection ({live.index.dim}): {wrong[:3]}")
        with live.lock:
            with self.sessions() as session, session.begin():
                results = crud.add_batch(session, collection_id=collection_id, items=items) if items else []
                for uri, reason in failures:
                    crud.record_failure(session, collection_id=collection_id, uri=uri, reason=reason)
            self.live.synced(collection_id)
        return results

    def delete_images(self, image_ids: Sequence[int]) -> int:
        self._writable("delete images")
        with self.sessions() as session, session.begin():
            by_collection = crud.delete_images(session, image_ids=image_ids)
        for collection_id in by_collection:
            self.live.synced(collection_id)
        return sum(len(ids) for ids in by_collection.values())

    def remove_sources(self, collection_id: int, uris: Sequence[str]) -> tuple[int, int]:
        """Forget these uris in the collection; returns (sources removed, images deleted with their last source)."""
        self._writable("remove sources")
        with self.sessions() as session, session.begin():
            removed, deleted = source_rows.remove_sources(session, collection_id=collection_id, uris=uris)
        if deleted:
            self.live.synced(collection_id)
        return removed, len(deleted)

    def iter_source_uris(self, collection_id: int, under: str) -> Iterator[str]:
        """Every uri ingested from under the folder `under`, at any depth, a page at a time."""
        after = ""
        while True:
            with self.sessions() as session:
                page = source_rows.source_uris(session, collection_id=collection_id, under=under, after=after)
            if not page:
                return
            yield from page
            after = page[-1]

    def image(self, image_id: int) -> ImageRecord:
        with self.sessions() as session:
            found = crud.image_record(session, image_id=image_id)
        if found is None:
            raise ImageNotFoundError(image_id)
        return found

    def images(self, image_ids: Sequence[int]) -> dict[int, ImageRecord]:
        out: dict[int, ImageRecord] = {}
        with self.sessions() as session:
            for start in range(0, len(image_ids), _IN_CHUNK):
                out.update(crud.image_records(session, image_ids=image_ids[start : start + _IN_CHUNK]))
        return out

    def source_root(self, image_id: int, uri: str) -> str | None:
        with self.sessions() as session:
            return session.scalar(select(Source.root).where(Source.image_id == image_id, Source.uri == uri))

    def patch_metadata(self, image_id: int, patch: dict[str, Any]) -> ImageRecord:
        """Set the given keys; a None value removes its key."""
        self._writable("edit metadata")
        with self.sessions() as session, session.begin():
            if session.get(Image, image_id) is None:
                raise ImageNotFoundError(image_id)
            crud.merge_metadata(session, image_id=image_id, patch=patch)
        return self.image(image_id)

    def vector(self, image_id: int) -> tuple[int, np.ndarray]:
        """(collection id, vector) of a stored image."""
        with self.sessions() as session:
            return vector_rows.vector_of(session, image_id=image_id)

    def failures(self, collection_id: int) -> list[tuple[str, str]]:
        """(uri, reason) of each item the collection's ingests could not add, latest attempt per uri."""
        with self.sessions() as session:
            return [(f.uri, f.reason) for f in crud.failures(session, collection_id=collection_id)]
