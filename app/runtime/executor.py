"""Keeps blocking work off the event loop: one model thread, and the shared pool for I/O and decoding."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from anyio import to_thread

P = ParamSpec("P")
T = TypeVar("T")


class InferenceRunner:
    """Runs model calls on `workers` dedicated threads. One worker's pass uses every core; with N,
    each pass runs on its share of the cores (the encoder's sessions are sized so), which keeps the
    cores busy through the serial parts of a pass when requests arrive concurrently."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = max(1, workers)
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="pe-inference")

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


async def run_blocking(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Decoding, fetching and model loading: the shared worker-thread pool."""
    return await to_thread.run_sync(functools.partial(fn, *args, **kwargs))
