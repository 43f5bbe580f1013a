"""Search: a text, an image or a stored image's id -> ranked images of a collection."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from app.errors import InvalidInputError
from app.media.image_ref import ImageRef
from app.model.variants import get_variant
from app.runtime.executor import run_blocking
from app.services.embedding import Embedder
from index.dto import CollectionInfo, ImageRecord
from index.errors import ModelMismatchError
from index.filters import SearchFilter
from index.store import VectorStore


@dataclass(frozen=True)
class SearchQuery:
    collection: str = "default"
    text: str | None = None
    image: ImageRef | None = None
    image_id: int | None = None
    top_k: int = 10
    search_filter: SearchFilter | None = None
    min_score: float | None = None
    model: str | None = None
    knobs: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ScoredImage:
    """One result: the stored image and its cosine to the query. The HTTP layer adds its file URL."""

    score: float
    image: ImageRecord


@dataclass
class Timing:
    encode: float = 0.0
    search: float = 0.0
    fetch: float = 0.0


class SearchService:
    def __init__(self, *, store: VectorStore, embedder: Embedder, max_top_k: int = 1000) -> None:
        self.store = store
        self.embedder = embedder
        self.max_top_k = max_top_k

    async def search(self, query: SearchQuery) -> tuple[list[ScoredImage], Timing]:
        if sum(x is not None for x in (query.text, query.image, query.image_id)) != 1:
            raise InvalidInputError("Give exactly one of text, image or image_id.")
        timing = Timing()
        info = await run_blocking(self.store.collection, query.collection)
        if query.model is not None:
            get_variant(query.model)  # an unknown id is a 400, not a mismatch
            self.store.check_model(info, query.model)
        started = time.perf_counter()
        vector = await self._query_vector(info, query)
        timing.encode = time.perf_counter() - started
        started = time.perf_counter()
        hits = await run_blocking(
            self.store.search,
            info.id,
            vector,
            min(query.top_k, self.max_top_k),
            query.search_filter,
            query.min_score,
            **query.knobs,
        )
        timing.search = time.perf_counter() - started
        started = time.perf_counter()
        images = await run_blocking(self.store.images, [h.id for h in hits])
        timing.fetch = time.perf_counter() - started
        return [ScoredImage(h.score, images[h.id]) for h in hits if h.id in images], timing

    async def _query_vector(self, info: CollectionInfo, query: SearchQuery) -> np.ndarray:
        if query.image_id is not None:
            collection_id, vector = await run_blocking(self.store.vector, query.image_id)
            if collection_id != info.id:
                other = next(c for c in await run_blocking(self.store.collections) if c.id == collection_id)
                if other.model != info.model:
                    raise ModelMismatchError(info.name, info.model, info.dim, other.model)
            return vector
        if query.text is not None:
            return (await self.embedder.embed_texts(info.model, [query.text]))[0]
        assert query.image is not None  # exactly one of the three, checked in search()
        return (await self.embedder.embed_images(info.model, [query.image]))[0]
