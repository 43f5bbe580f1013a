"""The Ray engine's stall watchdog: a run whose actor pool stops making progress is cancelled, with the cause.

Ray recovers an actor by itself (a restart, a batch re-run), but some failures leave Ray Data
waiting for ever: an actor restarting on a cluster with no room left for it, a restart stuck
loading the model, a pool whose actors are gone. The driver would sit with nothing moving and
nothing said. `StallWatch` decides; `ray_callback.WatchCallback` runs the decision inside Ray
Data's own scheduling loop, where raising `RayStallError` fails the dataset through Ray Data's
ordinary error path: its executor shuts down and kills the pool, and the driver's iterator raises.

This module imports Ray only inside functions, so the decision logic runs and is tested without it.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# The default stall time: a few minutes, longer for big batches (a CPU actor on a large model can take 10 s an
# image), so that a pool that still has a live actor keeps going while it has one.
STALL_FLOOR_S = 180.0
STALL_S_PER_ITEM = 10.0
# Before any actor is up, model loads (maybe a first download) get this many stall times.
STARTUP_FACTOR = 4
# Ray Data calls the step hook many times a second; the decision is cheap, but the GCS look-up is not.
_CHECK_EVERY_S = 0.5
_GCS_EVERY_S = 5.0

# The run's watch, for the callback that Ray Data's planner instantiates without arguments in the thread
# that starts the iteration (a context variable, so that runs in two threads keep their own).
_ACTIVE: contextvars.ContextVar[StallWatch | None] = contextvars.ContextVar("pe_search_ray_watch", default=None)


class RayStallError(Exception):
    """Raised in Ray Data's scheduling loop when the pool stalled; the driver's iterator raises it in turn."""


def default_stall_timeout(batch_size: int) -> float:
    return max(STALL_FLOOR_S, STALL_S_PER_ITEM * batch_size)


@dataclass(frozen=True)
class PoolState:
    """The encoder actors as Ray Data counts them, and (when the GCS answered) how many the GCS sees alive."""

    alive: int
    restarting: int
    pending: int
    in_flight: int
    # Tasks finished: a task runs one Ray block, a batch or more.
    finished_tasks: int
    gcs_alive: int | None = None

    def describe(self, actors: int) -> str:
        text = (
            f"{self.alive} of {actors} actors alive ({self.restarting} restarting, {self.pending} starting), "
            f"{self.in_flight} batch{'' if self.in_flight == 1 else 'es'} in flight"
        )
        if self.gcs_alive is not None and self.gcs_alive < self.alive:
            text += f"; Ray's actor table has {self.gcs_alive} alive"
        return text


class StallWatch:
    """Progress of one run, and whether it has stalled: no batch for `timeout` s while actors are dead or restarting.

    "Dead or restarting": an actor is restarting (killed, out of memory, node lost, a restart stuck), or no actor
    is alive while batches wait for one, or Ray's actor table sees fewer alive than Ray Data counts. Before any
    actor is up, the pool is starting, and gets STARTUP_FACTOR times as long. A pool whose actors are all
    alive is never stalled, however slow its batches.
    """

    def __init__(
        self,
        *,
        timeout: float,
        items: int,
        actors: int,
        clock: Callable[[], float] = time.monotonic,
        gcs_alive: Callable[[], int | None] | None = None,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"the stall timeout must be above 0, not {timeout}")
        self.timeout, self.items, self.actors = timeout, items, actors
        self._clock, self._gcs_alive = clock, gcs_alive
        self._lock = threading.Lock()
        self._received = 0
        self._finished = -1
        self._last_progress = self._last_check = self._last_gcs = clock()
        self._gcs_cached: int | None = None
        self._ever_alive = False
        self._warned = False
        # Set by the callback that Ray Data built for this run: without it, nothing would cancel a stall.
        self.attached = False

    def received(self, rows: int) -> None:
        """The driver got a batch of `rows` results."""
        with self._lock:
            self._received += rows
            self._last_progress = self._clock()

    def check(self, pool: PoolState) -> str | None:
        """The cause, if the run has stalled; else None. Called from Ray Data's scheduling loop."""
        now = self._clock()
        with self._lock:
            if pool.finished_tasks != self._finished:
                if self._finished >= 0:
                    self._last_progress = now
                self._finished = pool.finished_tasks
            # A batch back means an actor was up, even one that lived between two checks.
            self._ever_alive |= pool.alive > 0 or pool.finished_tasks > 0 or self._received > 0
            quiet = now - self._last_progress
            remaining = self.items - self._received
        if pool.gcs_alive is None and self._gcs_alive is not None and quiet >= self.timeout and pool.alive:
            pool = PoolState(**{**pool.__dict__, "gcs_alive": self._gcs_alive_cached(now)})
        if not self._ever_alive:
            limit = STARTUP_FACTOR * self.timeout
            if remaining > 0 and quiet >= limit:
                return (
                    f"no encoder actor came up in {limit:.0f} s ({pool.describe(self.actors)}): check that a node "
                    "has the CPUs or GPUs an actor asks for, and that the model loads there"
                )
            return None
        # No live actor with work waiting for one; an empty pool with nothing in flight is done (Ray Data lets
        # idle actors go at the end), even while the driver still commits what came back.
        unhealthy = (
            pool.restarting > 0
            or (pool.alive == 0 and pool.pending + pool.in_flight > 0)
            or (pool.gcs_alive is not None and pool.gcs_alive < pool.alive)
        )
        if unhealthy and not self._warned:
            self._warned = True  # once per run: the user sees why nothing moves before the run is cancelled
            log.warning(
                "Ray ingest: %s; the run is cancelled if no batch completes within %.0f s of the last one",
                pool.describe(self.actors),
                self.timeout,
            )
        if unhealthy and quiet >= self.timeout:
            return (
                f"stalled: no batch completed in {quiet:.0f} s while {pool.describe(self.actors)} "
                f"(--ray-stall-timeout {self.timeout:g})"
            )
        return None

    def due(self) -> bool:
        """Whether a check is due: Ray Data steps far more often than the watch needs to look."""
        now = self._clock()
        if now - self._last_check < _CHECK_EVERY_S:
            return False
        self._last_check = now
        return True

    def _gcs_alive_cached(self, now: float) -> int | None:
        if self._gcs_cached is None or now - self._last_gcs >= _GCS_EVERY_S:
            self._last_gcs = now
            self._gcs_cached = self._gcs_alive() if self._gcs_alive else None
        return self._gcs_cached


def activate(watch: StallWatch | None) -> contextvars.Token:
    """Make `watch` the one the next dataset started in this thread reports to; `deactivate` with the token."""
    return _ACTIVE.set(watch)


def deactivate(token: contextvars.Token) -> None:
    _ACTIVE.reset(token)


def active_watch() -> StallWatch | None:
    return _ACTIVE.get()


def pool_state(executor: Any) -> PoolState:
    """The actor pools' counts from a running Ray Data executor (internals: read defensively)."""
    alive = restarting = pending = in_flight = finished = 0
    for op in getattr(executor, "_topology", {}) or {}:
        info = op.get_actor_info() if hasattr(op, "get_actor_info") else None
        if info is None:
            continue
        alive += info.running
        restarting += info.restarting
        pending += info.pending
        in_flight += getattr(info, "tasks_in_flight", 0)
        finished += getattr(getattr(op, "metrics", None), "num_tasks_finished", 0) or 0
    return PoolState(alive, restarting, pending, in_flight, finished)


def gcs_alive_actors(class_part: str) -> int | None:
    """This job's actors alive per Ray's actor table, whose class name holds `class_part`; None if it cannot tell.

    A second opinion on Ray Data's count, for a pool that Ray Data believes alive when Ray has lost it.
    """
    try:
        import ray

        job = ray.get_runtime_context().get_job_id()
        table = ray._private.state.actors(actor_state_name="ALIVE")  # the GCS table; ray.util.state needs a dashboard
        return sum(1 for a in table.values() if a.get("JobID") == job and class_part in a.get("ActorClassName", ""))
    except Exception:  # noqa: BLE001 - only a second opinion: never let it fail the run
        log.debug("Ray's actor table did not answer", exc_info=True)
        return None
