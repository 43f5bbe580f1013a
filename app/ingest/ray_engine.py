"""The Ray engine: Ray Data streams items through a pool of encoder actors; this process skips and commits.

The driver (the process running `pe-search ingest --engine ray`) lists the source, skips
unchanged files against the store, and commits each batch of results through the same
writer as the local engine, so the store ends up the same. Each actor loads one PEEncoder
once, then reads, decodes, preprocesses (the local engine's Preparer) and embeds batches of
items: only sha256, sizes, format and a vector (or a failure reason) travel back.

Ray is imported only inside the functions that need it: `EmbedActor` itself runs without
Ray, so the local test suite and the local engine never require it. Connecting (and the
process environment that must come first) is in `ray_setup`; the stall watchdog in `ray_watch`.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from app.errors import RayIngestError, RayUnavailableError
from app.ingest.near_duplicates import NearDuplicatePolicy
from app.ingest.ray_actor import EmbedActor
from app.ingest.ray_setup import cluster_gpus, connect, data_context, in_order_actor_tasks
from app.ingest.ray_watch import (
    RayStallError,
    StallWatch,
    activate,
    deactivate,
    default_stall_timeout,
    gcs_alive_actors,
)
from app.ingest.sources import Rejected, SourceItem
from app.ingest.writer import (
    BatchObserver,
    IngestSummary,
    Progress,
    RunClock,
    chunks,
    commit_batch,
    image_row,
    unchanged_uris,
)
from app.model.variants import get_variant
from app.settings import Settings
from index.dto import CollectionInfo
from index.store import VectorStore

log = logging.getLogger(__name__)
_SKIP_CHUNK = 1024
# Batches a Ray block holds once the input is large, so the block count (Ray Data keeps state per block) grows
# with the input / 64 batches rather than with every batch; map_batches still hands actors one batch at a time.
_BATCHES_PER_BLOCK = 64


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None
    # Encoder actors; default: one per GPU of the cluster, else one per `cpus_per_actor` CPUs.
    actors: int | None = None
    # CPUs reserved by each CPU actor; its torch runs as many threads (at least 1), whatever TORCH_THREADS says.
    cpus_per_actor: float = 1.0
    # Decode threads inside each actor, ahead of its forward pass.
    decode_threads: int = 2
    # Seconds with no batch completed, while an actor is dead or restarting, before the run is cancelled
    # (ray_watch.StallWatch); None: ray_watch.default_stall_timeout(batch_size), a few minutes.
    stall_timeout: float | None = None
    # Ray's own recovery, bounded rather than Ray Data's unlimited default: restarts of each actor (killed, out
    # of memory, node lost), and re-runs of a batch whose actor died under it.
    max_restarts: int = 3
    max_task_retries: int = 3

    def __post_init__(self) -> None:
        if self.actors is not None and self.actors < 1:
            raise ValueError(f"actors must be at least 1, not {self.actors}")
        if not self.cpus_per_actor > 0:
            raise ValueError(f"cpus_per_actor must be above 0, not {self.cpus_per_actor}")
        if self.decode_threads < 1:
            raise ValueError(f"decode_threads must be at least 1, not {self.decode_threads}")
        if self.stall_timeout is not None and not 0 < self.stall_timeout < math.inf:
            raise ValueError(f"stall_timeout must be above 0, not {self.stall_timeout}")
        for name in ("max_restarts", "max_task_retries"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be at least 0, not {getattr(self, name)}")


class RayIngestor:
    """Same contract as the local Ingestor: items in, the store written, an IngestSummary out."""

    def __init__(
        self,
        *,
        store: VectorStore,
        settings: Settings,
        model: str,
        batch_size: int = 32,
        options: RayOptions | None = None,
        on_batch: BatchObserver | None = None,
        near_duplicates: NearDuplicatePolicy | None = None,
    ) -> None:
        self.near_duplicates = near_duplicates
        if importlib.util.find_spec("ray") is None:
            raise RayUnavailableError()
        self.store = store
        self.settings = settings
        self.variant = get_variant(model)
        self.batch_size = batch_size
        self.options = options or RayOptions()
        self.on_batch = on_batch

    def run(
        self, items: Iterable[SourceItem | Rejected], *, collection: str, progress: Progress | None = None
    ) -> IngestSummary:
        connect(self.options.address)
        info = self.store.ensure_collection(collection, model=self.variant.version_id, dim=self.variant.dim)
        summary = IngestSummary()
        from ray.exceptions import RayError

        with RunClock(store=self.store, collection=collection, summary=summary, progress=progress) as clock:
            todo = self._to_read(items, info, summary, clock.report)
            returned = 0
            try:
                for results in self._embedded(todo) if todo else ():
                    returned += len(results["n"])
                    self._commit(info, todo, results, summary)
                    clock.committed()
            except RayStallError as exc:
                raise RayIngestError(str(exc)) from exc
            except RayError as exc:
                raise RayIngestError(_last_line(exc)) from exc
            # A dataset shut down from outside ends like a finished one: never report a partial run as done.
            if returned != len(todo):
                raise RayIngestError(f"the actor pool returned {returned} of {len(todo)} items and stopped")
        return summary

    def _to_read(
        self,
        items: Iterable[SourceItem | Rejected],
        info: CollectionInfo,
        summary: IngestSummary,
        report: Callable[[], None],
    ) -> list[SourceItem]:
        """The items the actors must read; unchanged ones are counted and refused ones committed on the way."""
        todo: list[SourceItem] = []
        for chunk in chunks(items, _SKIP_CHUNK):
            unchanged = unchanged_uris(self.store, collection_id=info.id, entries=chunk)
            rejected = []
            for entry in chunk:
                if isinstance(entry, Rejected):
                    rejected.append((entry.uri, entry.reason))
                elif entry.uri in unchanged:
                    summary.unchanged += 1
                elif entry.data is not None:
                    raise ValueError("the Ray engine reads files and URLs; in-memory items go through the local engine")
                else:
                    todo.append(entry)
            commit_batch(self.store, info=info, rows=[], failures=rejected, summary=summary, on_batch=self.on_batch)
            report()
        return todo

    def _embedded(self, todo: list[SourceItem]) -> Iterator[dict[str, np.ndarray]]:
        """Result batches in input order, as the actor pool produces them."""
        import ray
        from ray.data import ActorPoolStrategy

        gpus = cluster_gpus()
        batches = max(1, math.ceil(len(todo) / self.batch_size))
        default = gpus or max(1, int(ray.cluster_resources().get("CPU", 1) // self.options.cpus_per_actor))
        # Never more actors than batches: each one is a process and a model load.
        actors = min(self.options.actors or default, batches)
        blocks = block_count(len(todo), batch_size=self.batch_size, actors=actors)
        # GPU actors keep Ray's thread default; a CPU actor's torch threads match the CPUs it reserved.
        threads = 0 if gpus else max(1, int(self.options.cpus_per_actor))
        watch = StallWatch(
            timeout=self.options.stall_timeout or default_stall_timeout(self.batch_size),
            items=len(todo),
            actors=actors,
            gcs_alive=lambda: gcs_alive_actors("EmbedActor"),
        )
        rows = [
            {
                "n": n,
                "uri": item.uri,
                "path": str(item.path) if item.path else "",
                "url": item.url or "",
                "object": item.object_url or "",
            }
            for n, item in enumerate(todo)
        ]
        with (
            data_context(preserve_order=True, progress_bars=False),  # the caller's Progress reports instead
            warnings.catch_warnings(),
        ):
            # Ray 2.60 deprecates map_batches' extra remote args but has no named parameter for the restart and
            # retry limits below yet; they are the only way to set them (revisit before Ray 2.64 removes them).
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=DeprecationWarning)
            source = ray.data.from_items(rows, override_num_blocks=blocks)
            del rows  # now in Ray's object store
            dataset = source.map_batches(
                EmbedActor,
                fn_constructor_kwargs={
                    "settings": _for_workers(self.settings, torch_threads=threads),
                    "model": self.variant.version_id,
                    "decode_threads": self.options.decode_threads,
                },
                batch_size=self.batch_size,
                batch_format="numpy",
                compute=ActorPoolStrategy(size=actors),
                # GPU actors where the cluster has GPUs; else CPU actors sized by cpus_per_actor.
                num_gpus=1 if gpus else None,
                num_cpus=None if gpus else self.options.cpus_per_actor,
                max_restarts=self.options.max_restarts,
                max_task_retries=self.options.max_task_retries,
                **in_order_actor_tasks(),
            )
        log.info(
            "Ray ingest: %d items in %d blocks over %d %s actors", len(todo), blocks, actors, "GPU" if gpus else "CPU"
        )
        # No prefetch: Ray Data's prefetcher holds results back until it has that many more blocks, so a batch
        # would wait for later ones before its commit (and be lost with them if an actor then fails).
        # The pool works ahead anyway; the driver's commit is short beside an actor's batch.
        token = activate(watch)  # the executor, which the first next() starts in this thread, reports to it
        try:
            produced = iter(dataset.iter_batches(batch_size=self.batch_size, batch_format="numpy", prefetch_batches=0))
            first = next(produced, None)
        finally:
            deactivate(token)  # here, not at the generator's end: that may run in another thread, or never
        if not watch.attached:
            log.warning("Ray ingest: the stall watchdog did not attach to this Ray Data; a stalled pool would hang")
        for results in itertools.chain([first] if first is not None else [], produced):
            watch.received(len(results["n"]))
            yield results

    def _commit(
        self, info: CollectionInfo, todo: list[SourceItem], results: dict[str, np.ndarray], summary: IngestSummary
    ) -> None:
        rows, failures = [], []
        for i, n in enumerate(results["n"]):
            item = todo[int(n)]
            if results["error"][i]:
                failures.append((item.uri, str(results["error"][i])))
                continue
            rows.append(
                image_row(
                    item,
                    sha256=str(results["sha256"][i]),
                    width=int(results["width"][i]),
                    height=int(results["height"][i]),
                    format=str(results["format"][i]) or None,
                    byte_size=int(results["byte_size"][i]),
                    vector=np.array(results["vector"][i], dtype=np.float32),
                )
            )
        commit_batch(
            self.store,
            info=info,
            rows=rows,
            failures=failures,
            summary=summary,
            on_batch=self.on_batch,
            near=self.near_duplicates,
        )


def block_count(items: int, *, batch_size: int, actors: int) -> int:
    """Ray blocks for `items`: a few per actor to keep them all busy, more only as the input grows, never empty ones."""
    batches = max(1, math.ceil(items / batch_size))
    return max(1, min(batches, max(4 * actors, items // (batch_size * _BATCHES_PER_BLOCK))))


def _last_line(exc: Exception) -> str:
    """The worker's own error, which Ray puts last under its traceback."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _for_workers(settings: Settings, *, torch_threads: int) -> Settings:
    """The driver's settings for the actors: without its API keys, and with the actors' own thread count.

    Actors need the model and fetch rules, not secrets. The driver's TORCH_THREADS sizes its own
    process; an actor's threads follow the CPUs Ray reserved for it (0: Ray's default, OMP_NUM_THREADS).
    """
    return settings.model_copy(
        update={"api_keys": (), "read_api_keys": (), "api_keys_file": None, "torch_threads": torch_threads}
    )
