"""Search: a query (texts, images, stored images, a vector, or a weighted mix) -> a page of ranked images."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

from app.errors import CursorError, InvalidInputError
from app.media.image_ref import ImageRef
from app.model.variants import get_variant
from app.runtime.executor import run_blocking
from app.services.cursor import CursorCodec, PageState
from app.services.embedding import Embedder
from app.services.query_parts import QueryComposer, QueryPart
from index.dto import CollectionInfo, Hit, ImageRecord
from index.filters import SearchFilter
from index.store import VectorStore

Order = Literal["score", "created_at", "-created_at"]
ORDERS: tuple[str, ...] = get_args(Order)
# How many of the best matches a date order sorts, unless the query says.
DEFAULT_CANDIDATES = 200


@dataclass(frozen=True)
class SearchQuery:
    """The single-field forms (text, image, image_id, vector) are parts of weight 1 beside `parts`.

    `cursor` replaces everything but the collection: it carries the query of the page before.
    """

    collection: str | None = None
    text: str | None = None
    image: ImageRef | None = None
    image_id: int | None = None
    vector: tuple[float, ...] | None = None
    parts: tuple[QueryPart, ...] = ()
    top_k: int = 10
    offset: int = 0
    order: Order = "score"
    candidates: int | None = None
    search_filter: SearchFilter | None = None
    min_score: float | None = None
    model: str | None = None
    knobs: dict[str, int] = field(default_factory=dict)
    cursor: str | None = None

    def all_parts(self) -> list[QueryPart]:
        single = [
            QueryPart(**{name: value})  # type: ignore[arg-type]
            for name, value in (
                ("text", self.text),
                ("image", self.image),
                ("image_id", self.image_id),
                ("vector", self.vector),
            )
            if value is not None
        ]
        return single + list(self.parts)


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


@dataclass
class SearchPage:
    results: list[ScoredImage]
    timing: Timing
    collection: str
    offset: int
    next_cursor: str | None


class SearchService:
    def __init__(self, *, store: VectorStore, embedder: Embedder, cursor_secret: bytes, max_top_k: int = 1000) -> None:
        self.store = store
        self.embedder = embedder
        self.composer = QueryComposer(store=store, embedder=embedder)
        self.cursors = CursorCodec(cursor_secret)
        self.max_top_k = max_top_k

    async def search(self, query: SearchQuery) -> SearchPage:
        timing = Timing()
        started = time.perf_counter()
        if query.cursor is not None:
            info, state = await self._resume(query)
        else:
            info, state = await self._start(query)
        timing.encode = time.perf_counter() - started
        results, more = await self._page(state, timing)
        next_cursor = self.cursors.encode(replace(state, offset=state.offset + state.top_k)) if more else None
        return SearchPage(results, timing, info.name, state.offset, next_cursor)

    async def _start(self, query: SearchQuery) -> tuple[CollectionInfo, PageState]:
        if query.order not in ORDERS:
            raise InvalidInputError(f"order must be one of {', '.join(ORDERS)} (got {query.order!r}).")
        info = await run_blocking(self.store.collection, query.collection or "default", exact_count=False)
        if query.model is not None:
            get_variant(query.model)  # an unknown id is a 400, not a mismatch
            self.store.check_model(info, query.model)
        vector = await self.composer.vector(info, query.all_parts())
        candidates = min(query.candidates or DEFAULT_CANDIDATES, self.max_top_k)
        state = PageState(
            collection_id=info.id,
            generation=info.generation,
            vector=vector,
            offset=query.offset,
            top_k=query.top_k,
            order=query.order,
            candidates=candidates,
            min_score=query.min_score,
            search_filter=query.search_filter,
            knobs=dict(query.knobs),
        )
        return info, state

    async def _resume(self, query: SearchQuery) -> tuple[CollectionInfo, PageState]:
        if query.all_parts():
            raise InvalidInputError("A cursor carries its own query: send the cursor without text, image or parts.")
        assert query.cursor is not None
        state = self.cursors.decode(query.cursor)
        name = await run_blocking(self.store.collection_name, state.collection_id)
        if name is None or (query.collection is not None and query.collection != name):
            raise CursorError("The cursor belongs to another (or a deleted) collection: search again.")
        info = await run_blocking(self.store.collection, name, exact_count=False)
        if info.generation != state.generation:
            raise CursorError("The collection's index was rebuilt since this cursor was made: search again.")
        return info, state

    def _depth(self, state: PageState) -> int:
        return self.max_top_k if state.order == "score" else state.candidates

    async def _page(self, state: PageState, timing: Timing) -> tuple[list[ScoredImage], bool]:
        """The page's results, and whether any follow it."""
        depth = self._depth(state)
        end = state.offset + state.top_k
        if state.offset >= depth:
            return [], False  # past the end: an empty page, not an error
        # One more than the page, to know whether a next page exists without sending an empty one.
        fetch_k = min(end + 1, depth) if state.order == "score" else depth
        started = time.perf_counter()
        hits: list[Hit] = await run_blocking(
            self.store.search,
            state.collection_id,
            state.vector,
            fetch_k,
            state.search_filter,
            state.min_score,
            **state.knobs,
        )
        timing.search = time.perf_counter() - started
        started = time.perf_counter()
        more = len(hits) > end and end < depth
        if state.order == "score":
            hits = hits[state.offset : end]
        images = await run_blocking(self.store.images, [h.id for h in hits])
        scored = [ScoredImage(h.score, images[h.id]) for h in hits if h.id in images]
        if state.order != "score":
            newest_first = state.order == "-created_at"
            scored.sort(key=lambda s: (s.image.created_at, s.image.id), reverse=newest_first)
            scored = scored[state.offset : end]
        timing.fetch = time.perf_counter() - started
        return scored, more
