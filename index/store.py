"""The vector store: the database (SQLite or PostgreSQL, the truth, vectors included) plus one FAISS
index per collection, behind one facade.

The parts: `index.images` holds the image methods, `index.live` keeps each collection's index in
step with the database, `index.query` plans a search, `index.staging` switches a collection to
another model, `index.crud` and `index.vector_rows` are the SQL. The store hands out records
(`index.dto`), never ORM rows.
A read-only store (a reader beside one writer) never migrates, writes rows or checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from index import crud
from index.ann.vector_index import choose_spec
from index.db import current_revision, head_revision, session_factory, upgrade_database
from index.dto import CollectionInfo, Hit
from index.duplicates import near_duplicate_pairs, shared_content
from index.errors import (
    CollectionExistsError,
    CollectionNotFoundError,
    ModelMismatchError,
    SchemaOutdatedError,
)
from index.filters import SearchFilter
from index.images import ImageMethods
from index.job_records import JobRecords
from index.live import LiveIndexes
from index.models import Collection
from index.query import QueryPlanner
from index.staging import Staging
from index.tuning import TuningGoal


class VectorStore(ImageMethods):
    def __init__(
        self,
        *,
        engine: Engine,
        index_dir: Path,
        memory_budget: int = 8 * 1024**3,
        read_only: bool = False,
        index_mmap: bool = True,
        rerank_dtype: str | None = "float32",
        tuning: TuningGoal | None = None,
    ) -> None:
        self.engine = engine
        self.read_only = read_only
        self.sessions = session_factory(engine)
        self.index_dir = index_dir
        self.memory_budget = memory_budget
        self.live = LiveIndexes(
            sessions=self.sessions,
            index_dir=index_dir,
            memory_budget=memory_budget,
            mmap=index_mmap,
            read_only=read_only,
            rerank_dtype=rerank_dtype,
            tuning=tuning,
        )
        self.query = QueryPlanner(self.sessions)
        self.jobs = JobRecords(self.sessions)
        self.staging = Staging(self.sessions)

    # --- lifecycle ---

    def open(self) -> VectorStore:
        """Migrate (the writer) or check the schema (a reader), then load every collection's index."""
        if not self.read_only:
            upgrade_database(self.engine)
        elif (current := current_revision(self.engine)) != (head := head_revision()):
            raise SchemaOutdatedError(current, head or "")
        with self.sessions() as session:
            collections = list(session.scalars(select(Collection)))
        for collection in collections:
            self.live.load(collection)
        return self

    def close(self, *, checkpoint: bool = True) -> None:
        if checkpoint:
            self.checkpoint()
        self.engine.dispose()

    def checkpoint(self, collection_name: str | None = None) -> bool:
        """Write the index files of changed collections (all, or the named one); False if a write failed."""
        if collection_name is None:
            return self.live.checkpoint()
        with self.sessions() as session:
            collection_id = session.scalar(select(Collection.id).where(Collection.name == collection_name))
        return True if collection_id is None else self.live.checkpoint(collection_id)

    def index_status(self) -> list[tuple[str, int, float]]:
        """Per loaded collection: (name, vectors indexed, seconds since its last checkpoint or opening)."""
        with self.sessions() as session:
            names = {cid: name for cid, name in session.execute(select(Collection.id, Collection.name))}
        return self.live.status(names)

    # --- collections ---

    def _info(self, session: Session, collection: Collection, *, count: bool = True) -> CollectionInfo:
        live = self.live.get(collection.id)
        indexed = live.index.count if live else 0
        return CollectionInfo(
            id=collection.id,
            name=collection.name,
            model=collection.model,
            dim=collection.dim,
            metric=collection.metric,
            index_type=collection.index_type,
            live_index=live.index.spec.kind if live else "none",
            index_params=live.index.spec.params if live else collection.index_params,
            # COUNT(*) reads the collection's whole id index: 20-50 ms at 1M rows, so a search skips it.
            count=crud.count_images(session, collection_id=collection.id) if count else indexed,
            indexed=indexed,
            created_at=collection.created_at.isoformat(),
            generation=collection.generation,
            tuned=(live.checkpoint.tuned if live else None) or collection.tuned_params or {},
        )

    def collections(self) -> list[CollectionInfo]:
        with self.sessions() as session:
            return [self._info(session, c) for c in session.scalars(select(Collection).order_by(Collection.name))]

    def collection(self, name: str, *, exact_count: bool = True) -> CollectionInfo:
        """The collection's record; without exact_count, `count` is the live index's (no COUNT query)."""
        with self.sessions() as session:
            return self._info(session, crud.get_collection(session, name=name), count=exact_count)

    def collection_name(self, collection_id: int) -> str | None:
        with self.sessions() as session:
            collection = session.get(Collection, collection_id)
            return collection.name if collection else None

    def model_of(self, name: str) -> str | None:
        """The model a collection was built with, or None when it does not exist yet."""
        with self.sessions() as session:
            return session.scalar(select(Collection.model).where(Collection.name == name))

    def create_collection(
        self, name: str, *, model: str, dim: int, index_type: str = "auto", index_params: dict[str, Any] | None = None
    ) -> CollectionInfo:
        self._writable("create collections")
        choose_spec(index_type, 0, dim, self.memory_budget)  # refuse unknown types before writing
        with self.sessions() as session, session.begin():
            if session.scalar(select(Collection).where(Collection.name == name)) is not None:
                raise CollectionExistsError(name)
            collection = Collection(
                name=name, model=model, dim=dim, index_type=index_type, index_params=index_params or {}
            )
            session.add(collection)
        self.live.load(collection)
        return self.collection(name)

    def ensure_collection(self, name: str, *, model: str, dim: int) -> CollectionInfo:
        """The named collection, created for this model if missing; refused if built by another model."""
        try:
            info = self.collection(name)
        except CollectionNotFoundError:
            try:
                return self.create_collection(name, model=model, dim=dim)
            except (CollectionExistsError, IntegrityError):
                info = self.collection(name)  # created concurrently, by this process or another
        self.check_model(info, model)
        return info

    @staticmethod
    def check_model(info: CollectionInfo, model: str) -> None:
        if info.model != model:
            raise ModelMismatchError(info.name, info.model, info.dim, model)

    def delete_collection(self, name: str) -> None:
        self._writable("delete collections")
        with self.sessions() as session, session.begin():
            collection = crud.get_collection(session, name=name)
            collection_id = collection.id
            session.delete(collection)
        self.live.drop(collection_id)

    def reindex(
        self, name: str, *, index_type: str | None = None, index_params: dict[str, Any] | None = None
    ) -> CollectionInfo:
        """Rebuild a collection's index from the database, optionally as another type or with other parameters
        (which replace the collection's own; an empty dict clears them)."""
        self._writable("reindex")
        with self.sessions() as session, session.begin():
            collection = crud.get_collection(session, name=name)
            if index_type:
                choose_spec(index_type, 0, collection.dim, self.memory_budget)
                collection.index_type = index_type
            if index_params is not None:
                collection.index_params = index_params
            collection.generation += 1
            collection.tuned_params = {}
        self.live.install(collection.id, self.live.rebuild(collection))
        self.checkpoint(name)
        return self.collection(name)

    # --- re-embedding with another model ---

    def stage_vectors(self, collection_id: int, image_ids: Sequence[int], vectors: np.ndarray) -> None:
        self._writable("re-embed collections")
        self.staging.stage(collection_id, image_ids, vectors)

    def discard_staged(self, collection_id: int) -> None:
        self.staging.discard(collection_id)

    def switch_model(self, name: str, *, model: str, dim: int) -> CollectionInfo:
        """Every image's staged vector in place of its current one, then a rebuild; refused if any is missing."""
        self._writable("switch models")
        self.staging.apply(name, model=model, dim=dim)
        return self.reindex(name)

    # --- search ---

    def search(
        self,
        collection_id: int,
        query: np.ndarray,
        k: int,
        search_filter: SearchFilter | None = None,
        min_score: float | None = None,
        **knobs: int,
    ) -> list[Hit]:
        """The top k images by cosine, caught up with every commit; `knobs` override ef_search / nprobe."""
        live = self.live.synced(collection_id)
        return self.query.search(live, collection_id, query, k, search_filter, min_score, **knobs)

    def near_duplicates(
        self, collection_id: int, threshold: float, *, nprobe: int | None = None
    ) -> Iterator[tuple[int, int, float]]:
        """(id, id, cosine) pairs at or above the threshold, by a blockwise range search of the live index."""
        live = self.live.synced(collection_id)
        return near_duplicate_pairs(self.sessions, live, collection_id, threshold, nprobe=nprobe)

    def shared_content(self, collection_id: int, limit: int = 1000) -> list[tuple[int, list[str]]]:
        """Images whose identical bytes were found at several uris: (image id, its uris)."""
        with self.sessions() as session:
            return shared_content(session, collection_id=collection_id, limit=limit)

    def stats(self) -> dict[str, Any]:
        return {
            "collections": [info.__dict__ for info in self.collections()],
            "index_dir": str(self.index_dir),
            "database": self.engine.url.render_as_string(hide_password=True),
        }
