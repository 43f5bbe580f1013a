"""Each collection's in-memory FAISS index, kept in step with the database.

FAISS files are derived checkpoints. On load, a collection takes its checkpoint and replays
what came after it (new rows, tombstones); a missing or corrupt file, or one of another model
or generation, is rebuilt from the database. Before each search the index catches up with rows
that another process (a CLI ingest, the writer beside several readers) committed since.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from index import crud, vector_rows
from index.ann import checkpoint as ckpt
from index.ann.build import build_index, plan_build
from index.ann.vector_file import Segment, tee
from index.ann.vector_index import VectorIndex, choose_spec
from index.errors import CollectionNotFoundError
from index.models import Collection
from index.rerank_vectors import RerankVectors, backfill, build_writer, open_rerank
from index.tuning import HeldOut, TuningGoal, hold_out, tune_index

log = logging.getLogger(__name__)


# Kinds whose checkpoints are memory-mapped at load: their files hold the float vectors (4 KB a
# 1024-d vector). An IVF-PQ file holds codes (89 bytes a vector, 89 MB at 1M) and is read in
# 0.1 s; mapped, each first touch of an inverted list is a page fault, 576 per query at nprobe 128.
MAPPED_KINDS = ("flat", "hnsw")


class LiveIndex:
    """A collection's in-memory index and the database ids it reflects."""

    def __init__(self, index: VectorIndex, checkpoint: ckpt.Checkpoint, rerank: RerankVectors | None = None) -> None:
        self.index = index
        self.checkpoint = checkpoint
        # Exact vectors for re-ranking a compressed index's candidates; None: read from the database.
        self.rerank = rerank
        self.lock = threading.RLock()
        self.dirty = False
        self.saved_at = time.monotonic()  # of the last successful checkpoint; until one, of the opening


class LiveIndexes:
    """The loaded collections' indexes by collection id: load, rebuild, catch up, checkpoint."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        index_dir: Path,
        memory_budget: int,
        mmap: bool,
        read_only: bool,
        rerank_dtype: str | None = "float32",
        tuning: TuningGoal | None = None,
    ) -> None:
        self.sessions = sessions
        self.rerank_dtype = rerank_dtype
        self.tuning = tuning
        self.index_dir = index_dir
        self.memory_budget = memory_budget
        self.mmap = mmap
        self.read_only = read_only
        self._live: dict[int, LiveIndex] = {}
        self._lock = threading.RLock()

    def directory(self, collection_id: int) -> Path:
        return self.index_dir / str(collection_id)

    def get(self, collection_id: int) -> LiveIndex | None:
        """The loaded index, or None; never loads."""
        with self._lock:
            return self._live.get(collection_id)

    def items(self) -> list[tuple[int, LiveIndex]]:
        with self._lock:
            return list(self._live.items())

    def install(self, collection_id: int, live: LiveIndex) -> None:
        with self._lock:
            self._live[collection_id] = live

    def drop(self, collection_id: int) -> None:
        """Forget a deleted collection's index and remove its files."""
        with self._lock:
            self._live.pop(collection_id, None)
        shutil.rmtree(self.directory(collection_id), ignore_errors=True)

    def load(self, collection: Collection) -> LiveIndex:
        """The collection's checkpoint if it is of this model and generation, caught up; else a rebuild."""
        loaded = ckpt.load(self.directory(collection.id), mmap=self.mmap, mmap_kinds=MAPPED_KINDS)
        usable = loaded is not None and (loaded[1].model, loaded[1].generation) == (
            collection.model,
            collection.generation,
        )
        if loaded is not None and usable:
            index, mark = loaded
            segments = [Segment.of(s) for s in mark.segments]
            rerank = open_rerank(self.directory(collection.id), index.spec.kind, index.dim, self.rerank_dtype, segments)
            live = LiveIndex(index, mark, rerank=rerank)
            if rerank is not None and rerank.file is None and not self.read_only and index.count:
                self._backfill(collection, live, rerank)
        else:
            if (self.directory(collection.id) / ckpt.POINTER).exists():
                log.warning("Rebuilding the index of %r from the database", collection.name)
            live = self.rebuild(collection)
        self.install(collection.id, live)
        return self.synced(collection.id) if usable else live

    def rebuild(self, collection: Collection) -> LiveIndex:
        with self.sessions() as session:
            n = crud.count_images(session, collection_id=collection.id)
            image_max, tomb_max, _ = crud.sync_state(session, collection_id=collection.id)
            spec = choose_spec(collection.index_type, n, collection.dim, self.memory_budget, collection.index_params)
            # Trained on a sample sized by the memory budget, filled chunk by chunk: never all vectors at once.
            plan = plan_build(spec, n, collection.dim, self.memory_budget)
            # Bounded by the watermark read above: rows committed meanwhile are left to the next catch-up.
            chunks = vector_rows.iter_vectors(
                session, collection_id=collection.id, up_to=image_max, batch=plan.chunk_rows
            )
            directory = self.directory(collection.id)
            dtype = None if self.read_only else self.rerank_dtype
            writer = build_writer(directory, spec.kind, dtype, collection.generation, image_max)
            held = (
                hold_out(session, collection_id=collection.id, n=n, kind=spec.kind, goal=self.tuning)
                if self.tuning is not None
                else None
            )
            source = tee(chunks, writer) if writer else chunks  # the segment holds every row
            try:
                index = build_index(
                    spec,
                    collection.dim,
                    plan=plan,
                    sample=lambda rows: vector_rows.training_sample(session, collection_id=collection.id, rows=rows),
                    chunks=held.split(source) if held else source,
                )
                segments = [writer.finish()] if writer else []
            except BaseException:
                if writer:
                    writer.abort()
                raise
        checkpoint = ckpt.Checkpoint(
            id_watermark=image_max,
            tombstone_watermark=tomb_max,
            model=collection.model,
            generation=collection.generation,
            segments=[s.as_json() for s in segments],
        )
        rerank = open_rerank(self.directory(collection.id), spec.kind, collection.dim, self.rerank_dtype, segments)
        live = LiveIndex(index, checkpoint, rerank=rerank)
        live.dirty = True
        log.info("Built a %s index of %d vectors for %r", spec.kind, index.count, collection.name)
        if held is not None:
            self._tune(collection, live, held)
        return live

    def _backfill(self, collection: Collection, live: LiveIndex, rerank: RerankVectors) -> None:
        started = time.monotonic()
        with self.sessions() as session:
            segment = backfill(
                rerank,
                session,
                collection_id=collection.id,
                generation=collection.generation,
                up_to=live.checkpoint.id_watermark,
            )
        live.checkpoint.segments = [segment.as_json()]
        live.dirty = True
        log.info(
            "Wrote the re-rank vectors of %r (%d rows) in %.1f s",
            collection.name,
            segment.rows,
            time.monotonic() - started,
        )

    def _tune(self, collection: Collection, live: LiveIndex, held: HeldOut) -> None:
        assert self.tuning is not None
        try:
            result = tune_index(self.sessions, live, held, self.tuning)
        finally:
            live.index.add(held.ids, held.vectors)  # the held-out rows join the index whatever happened
        live.checkpoint.tuned = result
        if self.read_only:
            return
        with self.sessions() as session, session.begin():
            row = session.get(Collection, collection.id)
            if row is not None and row.generation == collection.generation:
                row.tuned_params = result

    def loaded(self, collection_id: int) -> LiveIndex:
        """The collection's index, loading it first if this process has not yet."""
        live = self.get(collection_id)
        if live is not None:
            return live
        with self.sessions() as session:
            collection = session.get(Collection, collection_id)
            if collection is None:
                raise CollectionNotFoundError(str(collection_id))
        return self.load(collection)

    def synced(self, collection_id: int) -> LiveIndex:
        """The index with every row and deletion committed so far, by any process, applied.

        A generation change (a rebuild or model switch elsewhere) reloads the index instead.
        """
        live = self.loaded(collection_id)
        with self.sessions() as session, live.lock:
            image_max, tomb_max, generation = crud.sync_state(session, collection_id=collection_id)
            if generation != live.checkpoint.generation:
                collection = session.get(Collection, collection_id)
            else:
                collection = None
                self._replay(session, collection_id, live, image_max, tomb_max)
        return self.load(collection) if collection is not None else live

    @staticmethod
    def _replay(session: Session, collection_id: int, live: LiveIndex, image_max: int, tomb_max: int) -> None:
        mark = live.checkpoint
        if image_max > mark.id_watermark:
            for ids, vectors in vector_rows.iter_vectors(
                session, collection_id=collection_id, after_id=mark.id_watermark, up_to=image_max
            ):
                live.index.add(ids, vectors)
                if live.rerank is not None:
                    live.rerank.add(ids, vectors)
            mark.id_watermark = image_max
            live.dirty = True
        if tomb_max > mark.tombstone_watermark:
            gone = crud.tombstones_between(
                session, collection_id=collection_id, after_id=mark.tombstone_watermark, up_to=tomb_max
            )
            live.index.remove(np.asarray(gone, dtype=np.int64))
            mark.tombstone_watermark = tomb_max
            live.dirty = True

    def checkpoint(self, collection_id: int | None = None) -> bool:
        """Write the index files of changed collections (all, or one); False if any write failed.

        A failed write (a full disk, an unwritable data dir) leaves the previous checkpoint
        whole and the index dirty: nothing is lost, since the database has every row and a
        later checkpoint or start-up replays them. A read-only process leaves the files to the writer.
        """
        if self.read_only:
            return True
        ok = True
        for cid, live in self.items():
            if collection_id is not None and cid != collection_id:
                continue
            with live.lock:
                if live.dirty:
                    ok = self._save(cid, live) and ok
        return ok

    def _save(self, collection_id: int, live: LiveIndex) -> bool:
        try:
            pending = replace(live.checkpoint)
            segments = live.rerank.flush(pending.generation) if live.rerank is not None else []
            pending.segments = [s.as_json() for s in segments]
            previous_file = pending.file
            live.checkpoint = ckpt.save(self.directory(collection_id), live.index, pending)
            if live.rerank is not None and live.checkpoint.file != previous_file:  # not refused
                live.rerank.adopt(segments)
        except OSError as exc:
            log.error(
                "Could not checkpoint the index of collection %d in %s (%s); the previous checkpoint "
                "is intact and the database holds every vector.",
                collection_id,
                self.directory(collection_id),
                exc,
            )
            return False
        live.dirty = False
        live.saved_at = time.monotonic()
        return True

    def status(self, names: dict[int, str]) -> list[tuple[str, int, float]]:
        """Per loaded collection still in `names`: (name, vectors indexed, seconds since its last checkpoint)."""
        now = time.monotonic()
        return sorted((names[cid], live.index.count, now - live.saved_at) for cid, live in self.items() if cid in names)
