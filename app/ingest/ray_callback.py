"""The stall watchdog's hook in Ray Data's scheduling loop (imports Ray: import it only where Ray is running).

A module of its own, imported by name: Ray Data pickles its DataContext, which lists this class,
to the workers by reference, so the class must be importable there, and Ray with it.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.data._internal.execution.execution_callback import ExecutionCallback

from app.ingest.ray_watch import RayStallError, active_watch, pool_state

log = logging.getLogger(__name__)


class WatchCallback(ExecutionCallback):
    """Checks the run's watch at each step of Ray Data's scheduling loop; raising there fails the dataset."""

    def __init__(self) -> None:
        # Ray Data's planner builds callbacks without arguments, in the thread that starts the iteration.
        self.watch = active_watch()
        if self.watch is not None:
            self.watch.attached = True

    def on_execution_step(self, executor: Any) -> None:
        if self.watch is not None and self.watch.due():
            cause = self.watch.check(pool_state(executor))
            if cause:
                log.error("Ray ingest: %s; cancelling the run", cause)
                raise RayStallError(cause)
