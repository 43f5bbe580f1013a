"""The vector store: the database (SQLite or PostgreSQL: the truth, vectors included) plus one FAISS index per collection.

FAISS files are derived checkpoints. On open, each collection loads its checkpoint
and replays what came after it (new rows, tombstones); a missing or corrupt file is
rebuilt from the database. Before each search the store catches up with rows that
another process (a CLI ingest, the writer of several API processes) committed since.
A read-only store (a reader beside one writer) never migrates, writes rows or checkpoints.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from index.ann import checkpoint as ckpt
from index import crud
from index.db import current_revision, head_revision, session_factory, upgrade_database
from index.errors import (
    CollectionExistsError,
    CollectionNotFoundError,
    ImageNotFoundError,
    IncompleteStagingError,
    ModelMismatchError,
    ReadOnlyError,
    SchemaOutdatedError,
)
from index.filters import SearchFilter
from index.models import Collection, Image, Source
from index.ann.build import build_index, plan_build, training_sample
from index.ann.vector_index import VectorIndex, choose_spec

log = logging.getLogger(__name__)
# Below this many filter matches, an approximate index's filtered search is replaced by exact
# scoring of the matches' stored vectors (40 MB of reads at 1024-d); a flat index is exact anyway.
EXACT_FILTER_LIMIT = 10_000
_IN_CHUNK = 10_000


@dataclass(frozen=True)
class CollectionInfo:
    id: int
    name: str
    model: str
    dim: int
    metric: str
    index_type: str
    live_index: str
    index_params: dict[str, Any]
    count: int
    indexed: int
    created_at: str


def _cosine(score: float) -> float:
    # float32 rounding can put an image's score against itself a hair above 1.
    return min(1.0, max(-1.0, float(score)))


@dataclass(frozen=True)
class Hit:
    id: int
    score: float


class _Live:
    """A collection's in-memory index and the database ids it reflects."""

    def __init__(self, index: VectorIndex, checkpoint: ckpt.Checkpoint) -> None:
        self.index = index
        self.checkpoint = checkpoint
        self.lock = threading.RLock()
        self.dirty = False
        self.saved_at = time.monotonic()  # of the last successful checkpoint; until one, of the opening


class VectorStore:
    def __init__(
        self, *, engine: Engine, index_dir: Path, memory_budget: int = 8 * 1024**3, read_only: bool = False,
        index_mmap: bool = True,
    ) -> None:
        self.engine = engine
        self.index_mmap = index_mmap
        self.read_only = read_only
        self.sessions = session_factory(engine)
        self.index_dir = index_dir
        self.memory_budget = memory_budget
        self._live: dict[int, _Live] = {}
        self._lock = threading.RLock()

    # --- lifecycle ---

    def open(self) -> VectorStore:
        if not self.read_only:
            upgrade_database(self.engine)
        elif (current := current_revision(self.engine)) != (head := head_revision()):
            raise SchemaOutdatedError(current, head or "")
        with self.sessions() as session:
            collections = list(session.scalars(select(Collection)))
        for collection in collections:
            self._load(collection)
        return self

    def close(self) -> None:
        self.checkpoint()
        self.engine.dispose()

    def _dir(self, collection_id: int) -> Path:
        return self.index_dir / str(collection_id)

    def _load(self, collection: Collection) -> _Live:
        """The collection's checkpoint if it is of this model and generation, caught up; else a rebuild."""
        loaded = ckpt.load(self._dir(collection.id), mmap=self.index_mmap)
        usable = loaded is not None and (loaded[1].model, loaded[1].generation) == (collection.model, collection.generation)
        if usable:
            live = _Live(*loaded)
        else:
            if (self._dir(collection.id) / ckpt.POINTER).exists():
                log.warning("Rebuilding the index of %r from the database", collection.name)
            live = self._rebuild(collection)
        with self._lock:
            self._live[collection.id] = live
        return self._synced(collection.id) if usable else live

    def _rebuild(self, collection: Collection) -> _Live:
        with self.sessions() as session:
            n = crud.count_images(session, collection_id=collection.id)
            image_max, tomb_max, _ = crud.sync_state(session, collection_id=collection.id)
            spec = choose_spec(collection.index_type, n, collection.dim, self.memory_budget, collection.index_params)
            # Trained on a sample sized by the memory budget, filled chunk by chunk: never all vectors at once.
            plan = plan_build(spec, n, collection.dim, self.memory_budget)
            index = build_index(
                spec, collection.dim, plan=plan,
                sample=lambda rows: training_sample(session, collection_id=collection.id, rows=rows),
                # Bounded by the watermark read above: rows committed meanwhile are left to the next catch-up.
                chunks=crud.iter_vectors(session, collection_id=collection.id, up_to=image_max, batch=plan.chunk_rows),
            )
        checkpoint = ckpt.Checkpoint(
            id_watermark=image_max, tombstone_watermark=tomb_max, model=collection.model, generation=collection.generation
        )
        live = _Live(index, checkpoint)
        live.dirty = True
        log.info("Built a %s index of %d vectors for %r", spec.kind, index.count, collection.name)
        return live

    def _synced(self, collection_id: int) -> _Live:
        """The live index with every row and deletion committed so far, by any process, applied.

        A generation change (a rebuild or model switch elsewhere) reloads the index instead.
        """
        live = self._live_for(collection_id)
        with self.sessions() as session, live.lock:
            image_max, tomb_max, generation = crud.sync_state(session, collection_id=collection_id)
            if generation != live.checkpoint.generation:
                collection = session.get(Collection, collection_id)
            else:
                collection = None
                self._replay(session, collection_id, live, image_max, tomb_max)
        return self._load(collection) if collection is not None else live

    def _replay(self, session: Session, collection_id: int, live: _Live, image_max: int, tomb_max: int) -> None:
        mark = live.checkpoint
        if image_max > mark.id_watermark:
            for ids, vectors in crud.iter_vectors(
                session, collection_id=collection_id, after_id=mark.id_watermark, up_to=image_max
            ):
                live.index.add(ids, vectors)
            mark.id_watermark = image_max
            live.dirty = True
        if tomb_max > mark.tombstone_watermark:
            gone = crud.tombstones_between(
                session, collection_id=collection_id, after_id=mark.tombstone_watermark, up_to=tomb_max
            )
            live.index.remove(np.asarray(gone, dtype=np.int64))
            mark.tombstone_watermark = tomb_max
            live.dirty = True

    def checkpoint(self, collection_name: str | None = None) -> bool:
        """Write the index files of changed collections (all, or one); False if any write failed.

        A failed write (a full disk, an unwritable data dir) leaves the previous checkpoint
        whole and the index dirty: nothing is lost, since the database has every row and a
        later checkpoint or start-up replays them. A read-only store leaves the files to the writer.
        """
        if self.read_only:
            return True
        with self._lock:
            items = list(self._live.items())
        ok = True
        for collection_id, live in items:
            if collection_name is not None and self.collection_name(collection_id) != collection_name:
                continue
            with live.lock:
                if not live.dirty:
                    continue
                try:
                    live.checkpoint = ckpt.save(self._dir(collection_id), live.index, replace(live.checkpoint))
                    live.dirty = False
                    live.saved_at = time.monotonic()
                except OSError as exc:
                    ok = False
                    log.error(
                        "Could not checkpoint the index of collection %d in %s (%s); the previous checkpoint "
                        "is intact and the database holds every vector.", collection_id, self._dir(collection_id), exc,
                    )
        return ok

    def index_status(self) -> list[tuple[str, int, float]]:
        """Per loaded collection: (name, vectors indexed, seconds since its last successful checkpoint,
        or since it was opened if none yet)."""
        with self.sessions() as session:
            names = {cid: name for cid, name in session.execute(select(Collection.id, Collection.name))}
        with self._lock:
            items = list(self._live.items())
        now = time.monotonic()
        return sorted((names[cid], live.index.count, now - live.saved_at) for cid, live in items if cid in names)

    def collection_name(self, collection_id: int) -> str | None:
        with self.sessions() as session:
            collection = session.get(Collection, collection_id)
            return collection.name if collection else None

    # --- collections ---

    def _writable(self, what: str) -> None:
        if self.read_only:
            raise ReadOnlyError(what)

    def _info(self, session: Session, collection: Collection) -> CollectionInfo:
        live = self._live.get(collection.id)
        return CollectionInfo(
            id=collection.id,
            name=collection.name,
            model=collection.model,
            dim=collection.dim,
            metric=collection.metric,
            index_type=collection.index_type,
            live_index=live.index.spec.kind if live else "none",
            index_params=live.index.spec.params if live else collection.index_params,
            count=crud.count_images(session, collection_id=collection.id),
            indexed=live.index.count if live else 0,
            created_at=collection.created_at.isoformat(),
        )

    def collections(self) -> list[CollectionInfo]:
        with self.sessions() as session:
            return [self._info(session, c) for c in session.scalars(select(Collection).order_by(Collection.name))]

    def collection(self, name: str) -> CollectionInfo:
        with self.sessions() as session:
            return self._info(session, crud.get_collection(session, name=name))

    def model_of(self, name: str) -> str | None:
        """The model a collection was built with, or None when it does not exist yet."""
        with self.sessions() as session:
            return session.scalar(select(Collection.model).where(Collection.name == name))

    def create_collection(self, name: str, *, model: str, dim: int, index_type: str = "auto", index_params: dict | None = None) -> CollectionInfo:
        self._writable("create collections")
        choose_spec(index_type, 0, dim, self.memory_budget)  # refuse unknown types before writing
        with self.sessions() as session, session.begin():
            if session.scalar(select(Collection).where(Collection.name == name)) is not None:
                raise CollectionExistsError(name)
            collection = Collection(name=name, model=model, dim=dim, index_type=index_type, index_params=index_params or {})
            session.add(collection)
        self._load(collection)
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
        with self._lock:
            self._live.pop(collection_id, None)
        shutil.rmtree(self._dir(collection_id), ignore_errors=True)

    def reindex(self, name: str, *, index_type: str | None = None) -> CollectionInfo:
        """Rebuild a collection's index from the database, optionally as another index type."""
        self._writable("reindex")
        with self.sessions() as session, session.begin():
            collection = crud.get_collection(session, name=name)
            if index_type:
                choose_spec(index_type, 0, collection.dim, self.memory_budget)
                collection.index_type = index_type
            collection.generation += 1
        live = self._rebuild(collection)
        with self._lock:
            self._live[collection.id] = live
        self.checkpoint(name)
        return self.collection(name)

    def iter_images(self, collection_id: int, batch: int = 256) -> Iterator[list[Image]]:
        """A collection's image rows in id order, in batches, detached from any session."""
        last = 0
        while True:
            with self.sessions() as session:
                rows = crud.images_after(session, collection_id=collection_id, after_id=last, limit=batch)
                session.expunge_all()
            if not rows:
                return
            yield rows
            last = rows[-1].id

    def stage_vectors(self, collection_id: int, image_ids: Sequence[int], vectors: np.ndarray) -> None:
        self._writable("re-embed collections")
        with self.sessions() as session, session.begin():
            crud.stage_vectors(session, collection_id=collection_id, image_ids=image_ids, vectors=vectors)

    def discard_staged(self, collection_id: int) -> None:
        with self.sessions() as session, session.begin():
            crud.discard_staged(session, collection_id=collection_id)

    def switch_model(self, name: str, *, model: str, dim: int) -> CollectionInfo:
        """Swap every image's vector for its staged one and relabel the collection, in one transaction.

        Refused (nothing changes) unless every image of the collection has a staged vector.
        """
        self._writable("switch models")
        with self.sessions() as session, session.begin():
            collection = crud.get_collection(session, name=name)
            missing = crud.unstaged_count(session, collection_id=collection.id)
            if missing:
                raise IncompleteStagingError(name, missing)
            crud.apply_staged(session, collection_id=collection.id)
            collection.model, collection.dim = model, dim
        return self.reindex(name)

    def _live_for(self, collection_id: int) -> _Live:
        with self._lock:
            live = self._live.get(collection_id)
        if live is None:
            with self.sessions() as session:
                collection = session.get(Collection, collection_id)
                if collection is None:
                    raise CollectionNotFoundError(str(collection_id))
            live = self._load(collection)
        return live

    # --- images ---

    def known_sources(self, collection_id: int, uris: Sequence[str]) -> dict[str, tuple[int | None, float | None, int]]:
        with self.sessions() as session:
            rows = crud.sources_by_uri(session, collection_id=collection_id, uris=list(uris))
            return {uri: (s.size, s.mtime, s.image_id) for uri, s in rows.items()}

    def existing_shas(self, collection_id: int, shas: Sequence[str]) -> dict[str, int]:
        with self.sessions() as session:
            return crud.ids_by_sha(session, collection_id=collection_id, shas=shas)

    def add_images(self, collection_id: int, items: Sequence[crud.NewImage], failures: Sequence[tuple[str, str]] = ()) -> list[tuple[int, bool]]:
        """Commit a batch in one transaction: new images, or new sources for known content.

        Returns (image id, created) per item. Then the live index takes the new vectors.
        """
        self._writable("add images")
        live = self._live_for(collection_id)
        wrong = [item.uri for item in items if item.vector is not None and len(item.vector) != live.index.dim]
        if wrong:
            raise ValueError(f"vectors of the wrong dimension for this collection ({live.index.dim}): {wrong[:3]}")
        with live.lock:
            with self.sessions() as session, session.begin():
                results = crud.add_batch(session, collection_id=collection_id, items=items) if items else []
                for uri, reason in failures:
                    crud.record_failure(session, collection_id=collection_id, uri=uri, reason=reason)
            self._synced(collection_id)
        return results

    def delete_images(self, image_ids: Sequence[int]) -> int:
        self._writable("delete images")
        with self.sessions() as session, session.begin():
            by_collection = crud.delete_images(session, image_ids=image_ids)
        for collection_id in by_collection:
            self._synced(collection_id)
        return sum(len(ids) for ids in by_collection.values())

    def image(self, image_id: int) -> Image:
        with self.sessions() as session:
            image = session.get(Image, image_id)
            if image is None:
                raise ImageNotFoundError(image_id)
            session.expunge(image)
            return image

    def images(self, image_ids: Sequence[int]) -> dict[int, Image]:
        out: dict[int, Image] = {}
        with self.sessions() as session:
            for start in range(0, len(image_ids), _IN_CHUNK):
                out.update(crud.images_by_id(session, image_ids=image_ids[start : start + _IN_CHUNK]))
            session.expunge_all()
        return out

    def source_root(self, image_id: int, uri: str) -> str | None:
        with self.sessions() as session:
            return session.scalar(select(Source.root).where(Source.image_id == image_id, Source.uri == uri))

    def patch_metadata(self, image_id: int, patch: dict[str, Any]) -> Image:
        """Set the given keys; a None value removes its key."""
        self._writable("edit metadata")
        with self.sessions() as session, session.begin():
            if session.get(Image, image_id) is None:
                raise ImageNotFoundError(image_id)
            crud.merge_metadata(session, image_id=image_id, patch=patch)
        return self.image(image_id)

    def vector(self, image_id: int) -> tuple[int, np.ndarray]:
        """(collection id, vector) of a stored image."""
        image = self.image(image_id)
        return image.collection_id, np.frombuffer(image.vector, dtype=np.float32)

    def failures(self, collection_id: int) -> list[tuple[str, str]]:
        with self.sessions() as session:
            return [(f.uri, f.reason) for f in crud.failures(session, collection_id=collection_id)]

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
        live = self._synced(collection_id)
        query = np.asarray(query, dtype=np.float32)
        allowed = None
        if search_filter is not None and not search_filter.empty:
            with self.sessions() as session:
                allowed = crud.filtered_ids(session, collection_id=collection_id, search_filter=search_filter)
            if live.index.spec.kind != "flat" and len(allowed) <= EXACT_FILTER_LIMIT:
                hits = self._exact(allowed, query, k)
                return [h for h in hits if min_score is None or h.score >= min_score]
        rerank = live.index.spec.kind == "ivfpq"
        fetch_k = k * int(live.index.spec.params.get("rerank", 1)) if rerank else k
        with live.lock:
            scores, ids = live.index.search(query, fetch_k, allowed, **knobs)
        if rerank and len(ids):
            hits = self._exact(ids, query, k)
        else:
            hits = [Hit(int(i), _cosine(s)) for s, i in zip(scores, ids)]
        if allowed is not None and len(hits) < min(k, len(allowed)):
            hits = self._exact(allowed, query, k)  # the approximate index under-filled a filtered query
        return [h for h in hits if min_score is None or h.score >= min_score]

    def _exact(self, candidate_ids: np.ndarray, query: np.ndarray, k: int) -> list[Hit]:
        ids_all, scores_all = [], []
        with self.sessions() as session:
            for start in range(0, len(candidate_ids), _IN_CHUNK):
                ids, vectors = crud.vectors_for(session, image_ids=[int(i) for i in candidate_ids[start : start + _IN_CHUNK]])
                if len(ids):
                    ids_all.append(ids)
                    scores_all.append(vectors @ query)
        if not ids_all:
            return []
        ids, scores = np.concatenate(ids_all), np.concatenate(scores_all)
        top = np.argsort(-scores, kind="stable")[:k]
        return [Hit(int(ids[i]), _cosine(scores[i])) for i in top]

    def stats(self) -> dict[str, Any]:
        return {
            "collections": [info.__dict__ for info in self.collections()],
            "index_dir": str(self.index_dir),
            "database": self.engine.url.render_as_string(hide_password=True),
        }
