"""Micro-batching: concurrent requests share forward passes, and each gets its own rows back."""

from __future__ import annotations

import asyncio

import numpy as np

from app.model.encoder import PEEncoder
from app.runtime.batcher import MicroBatcher
from app.runtime.executor import InferenceRunner
from app.services.embedding import TextCache


def test_concurrent_requests_merge_into_fewer_passes(encoder: PEEncoder, monkeypatch) -> None:
    passes: list[int] = []
    original = encoder.embed_texts

    def counting(texts):  # noqa: ANN001, ANN202
        passes.append(len(texts))
        return original(texts)

    monkeypatch.setattr(encoder, "embed_texts", counting)
    texts = [[f"request {r} text {i}" for i in range(r % 3 + 1)] for r in range(12)]

    async def run() -> list[np.ndarray]:
        batcher = MicroBatcher(InferenceRunner(), max_batch=16, max_wait_ms=20)
        try:
            return await asyncio.gather(*(batcher.texts(encoder, t) for t in texts))
        finally:
            await batcher.close()

    results = asyncio.run(run())
    assert sum(passes) == sum(len(t) for t in texts) and len(passes) < len(texts)
    assert max(passes) <= 16
    for request, vectors in zip(texts, results):
        np.testing.assert_allclose(vectors, original(request), atol=1e-5)


def test_disabled_batcher_runs_each_request_alone(encoder: PEEncoder) -> None:
    async def run() -> np.ndarray:
        return await MicroBatcher(InferenceRunner(), enabled=False).texts(encoder, ["a", "b"])

    assert asyncio.run(run()).shape == (2, 512)


def test_a_failed_pass_fails_every_request_in_it(encoder: PEEncoder, monkeypatch) -> None:
    monkeypatch.setattr(encoder, "embed_texts", lambda texts: (_ for _ in ()).throw(RuntimeError("boom")))

    async def run() -> list:
        batcher = MicroBatcher(InferenceRunner(), max_batch=8, max_wait_ms=20)
        try:
            return await asyncio.gather(*(batcher.texts(encoder, ["x"]) for _ in range(3)), return_exceptions=True)
        finally:
            await batcher.close()

    assert all(isinstance(r, RuntimeError) for r in asyncio.run(run()))


def test_text_cache_is_lru_per_model() -> None:
    cache = TextCache(2)
    cache.put("m", "a", np.ones(2))
    cache.put("m", "b", np.zeros(2))
    assert cache.get("m", "a") is not None  # a is now the most recent
    cache.put("m", "c", np.ones(2))
    assert cache.get("m", "b") is None and cache.get("other", "a") is None
    assert (cache.hits, cache.misses) == (1, 2)
    off = TextCache(0)
    off.put("m", "a", np.ones(2))
    assert off.get("m", "a") is None
