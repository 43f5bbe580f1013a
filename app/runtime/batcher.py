"""Dynamic micro-batching: concurrent requests' items merged into one forward pass.

Each model and kind (text, image) has a queue and a worker. The worker takes the first
waiting request, every request already queued behind it, and whatever arrives within
`max_wait_ms`, up to `max_batch` items, and runs them through the model in one call on
an inference thread. Up to the runner's `workers` passes run at once; while they do, new
requests queue up for the next one, so under load batches form by themselves; alone, a
request waits at most `max_wait_ms`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.model.encoder import PEEncoder
from app.runtime.executor import InferenceRunner


@dataclass
class _Job:
    encoder: PEEncoder
    items: list[Any]
    future: asyncio.Future


class MicroBatcher:
    def __init__(
        self, runner: InferenceRunner, *, max_batch: int = 32, max_wait_ms: float = 2.0, enabled: bool = True
    ) -> None:
        self.runner = runner
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.enabled = enabled
        # A queue and its worker belong to the event loop that made them (one per server;
        # tests may run several): a different loop gets its own.
        self._queues: dict[tuple[str, str], tuple[asyncio.AbstractEventLoop, asyncio.Queue[_Job], asyncio.Task]] = {}
        self._passes: set[asyncio.Task] = set()

    async def texts(self, encoder: PEEncoder, texts: Sequence[str]) -> np.ndarray:
        return await self._submit(encoder, "text", list(texts))

    async def images(self, encoder: PEEncoder, pixels: Sequence[Any]) -> np.ndarray:
        """Images already through `encoder.transform` (done in decode threads, not here)."""
        return await self._submit(encoder, "image", list(pixels))

    async def _submit(self, encoder: PEEncoder, kind: str, items: list[Any]) -> np.ndarray:
        if not self.enabled:
            return await self.runner.run(_forward(encoder, kind), items)
        loop = asyncio.get_running_loop()
        key = (encoder.variant.version_id, kind)
        entry = self._queues.get(key)
        if entry is None or entry[0] is not loop or entry[2].done():
            queue: asyncio.Queue[_Job] = asyncio.Queue()
            entry = self._queues[key] = (loop, queue, loop.create_task(self._work(queue, kind)))
        queue = entry[1]
        job = _Job(encoder, items, loop.create_future())
        await queue.put(job)
        return await job.future

    async def _work(self, queue: asyncio.Queue[_Job], kind: str) -> None:
        carried: _Job | None = None
        slots = asyncio.Semaphore(self.runner.workers)
        while True:
            first = carried or await queue.get()
            await slots.acquire()  # gather only once a worker is free: waiting requests join this pass
            batch, carried = await self._gather(queue, first)
            task = asyncio.create_task(self._run(batch, kind))
            self._passes.add(task)
            task.add_done_callback(functools.partial(self._finished, slots))

    async def _gather(self, queue: asyncio.Queue[_Job], first: _Job) -> tuple[list[_Job], _Job | None]:
        """Jobs for one pass: same encoder object (a reloaded model is another), at most max_batch items."""
        batch, size = [first], len(first.items)
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while size < self.max_batch:
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
            if job.encoder is not first.encoder or size + len(job.items) > self.max_batch:
                return batch, job
            batch.append(job)
            size += len(job.items)
        return batch, None

    async def _run(self, batch: list[_Job], kind: str) -> None:
        items = [item for job in batch for item in job.items]
        try:
            vectors = await self.runner.run(_forward(batch[0].encoder, kind), items)
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        start = 0
        for job in batch:
            if not job.future.done():  # a client that went away leaves a cancelled future
                job.future.set_result(vectors[start : start + len(job.items)])
            start += len(job.items)

    def _finished(self, slots: asyncio.Semaphore, task: asyncio.Task) -> None:
        self._passes.discard(task)
        slots.release()

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        workers = [task for owner, _, task in self._queues.values() if owner is loop]
        for worker in workers:
            worker.cancel()
        for worker in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker


def _forward(encoder: PEEncoder, kind: str) -> Callable[[Sequence[Any]], np.ndarray]:
    return encoder.embed_texts if kind == "text" else encoder.embed_pixels
