"""Re-embedding with another model: new vectors staged beside the current ones, then switched in one transaction."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from index import crud
from index.errors import IncompleteStagingError
from index.models import Image, ImageVector, StagedVector, utcnow


class Staging:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def stage(self, collection_id: int, image_ids: Sequence[int], vectors: np.ndarray) -> None:
        with self.sessions() as session, session.begin():
            stage_vectors(session, collection_id=collection_id, image_ids=image_ids, vectors=vectors)

    def discard(self, collection_id: int) -> None:
        with self.sessions() as session, session.begin():
            discard_staged(session, collection_id=collection_id)

    def apply(self, name: str, *, model: str, dim: int) -> None:
        """Swap every image's vector for its staged one and relabel the collection, in one transaction.

        Refused (nothing changes) unless every image of the collection has a staged vector.
        """
        with self.sessions() as session, session.begin():
            collection = crud.get_collection(session, name=name)
            missing = unstaged_count(session, collection_id=collection.id)
            if missing:
                raise IncompleteStagingError(name, missing)
            apply_staged(session, collection_id=collection.id)
            collection.model, collection.dim = model, dim


def stage_vectors(session: Session, *, collection_id: int, image_ids: Sequence[int], vectors: np.ndarray) -> None:
    session.execute(delete(StagedVector).where(StagedVector.image_id.in_(list(image_ids))))
    session.execute(
        insert(StagedVector),
        [
            {"image_id": int(i), "collection_id": collection_id, "vector": np.asarray(v, dtype=np.float32).tobytes()}
            for i, v in zip(image_ids, vectors, strict=True)
        ],
    )


def discard_staged(session: Session, *, collection_id: int) -> None:
    session.execute(delete(StagedVector).where(StagedVector.collection_id == collection_id))


def unstaged_count(session: Session, *, collection_id: int) -> int:
    staged = select(StagedVector.image_id).where(StagedVector.collection_id == collection_id)
    query = select(func.count()).select_from(Image).where(Image.collection_id == collection_id, Image.id.not_in(staged))
    return session.scalar(query) or 0


def apply_staged(session: Session, *, collection_id: int) -> None:
    staged = select(StagedVector.vector).where(StagedVector.image_id == ImageVector.image_id).scalar_subquery()
    members = select(Image.id).where(Image.collection_id == collection_id)
    session.execute(
        update(ImageVector).where(ImageVector.image_id.in_(members)).values(vector=staged),
        execution_options={"synchronize_session": False},
    )
    session.execute(
        update(Image).where(Image.collection_id == collection_id).values(updated_at=utcnow()),
        execution_options={"synchronize_session": False},
    )
    discard_staged(session, collection_id=collection_id)
