"""Text-to-image and image-to-image search."""

from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter, Query, Response

from app.api.auth import ReadAccess
from app.api.deps import SearchDep
from app.api.schemas import ErrorResponse, UnprocessableResponse
from app.api.store_schemas import SearchHit, SearchRequest, SearchResponse
from app.api.urls import file_url
from app.services.search import ScoredImage, SearchQuery, Timing
from index.filters import SearchFilter

router = APIRouter(
    tags=["search"],
    dependencies=[ReadAccess],
    responses={
        400: {"model": ErrorResponse},
        404: {"model": ErrorResponse, "description": "No such collection or image"},
        409: {"model": ErrorResponse, "description": "The collection was built with another model"},
    },
)


def _server_timing(timing: Timing, total: float) -> str:
    parts = {"encode": timing.encode, "faiss": timing.search, "fetch": timing.fetch, "total": total}
    return ", ".join(f"{name};dur={seconds * 1000:.2f}" for name, seconds in parts.items())


def _hit(hit: ScoredImage) -> SearchHit:
    image = hit.image
    return SearchHit(
        id=image.id,
        score=hit.score,
        uri=image.uri,
        width=image.width,
        height=image.height,
        format=image.format,
        metadata=image.meta,
        file_url=file_url(image.id),
    )


async def _run(search: SearchDep, query: SearchQuery, response: Response, started: float) -> SearchResponse:
    page = await search.search(query)
    total = time.perf_counter() - started
    response.headers["Server-Timing"] = _server_timing(page.timing, total)
    return SearchResponse(
        results=[_hit(r) for r in page.results],
        collection=page.collection,
        time=total,
        offset=page.offset,
        next_cursor=page.next_cursor,
    )


@router.post(
    "/search",
    response_model=SearchResponse,
    summary="Search a collection by text, image, stored image, vector, or a weighted mix of them",
    responses={
        422: {
            "model": UnprocessableResponse,
            "description": "An invalid body, or an empty, all-negative or mis-sized query",
        }
    },
)
async def search_post(body: SearchRequest, search: SearchDep, response: Response) -> SearchResponse:
    started = time.perf_counter()
    search_filter = SearchFilter(**body.filter.model_dump()) if body.filter else None
    knobs = {k: v for k, v in (("ef_search", body.ef_search), ("nprobe", body.nprobe), ("rerank", body.rerank)) if v}
    query = SearchQuery(
        collection=body.collection,
        text=body.text,
        image=body.image.to_ref() if body.image else None,
        image_id=body.image_id,
        vector=tuple(body.vector) if body.vector is not None else None,
        parts=body.query_parts(),
        top_k=body.top_k,
        offset=body.offset,
        order=body.order,
        candidates=body.candidates,
        cursor=body.cursor,
        search_filter=search_filter,
        min_score=body.min_score,
        model=body.perception_encoder_version_id,
        knobs=knobs,
    )
    return await _run(search, query, response, started)


@router.get("/search", response_model=SearchResponse, summary="Text search, for browsers and curl")
async def search_get(
    search: SearchDep,
    response: Response,
    q: str = Query(min_length=1, description="What to look for"),
    k: int = Query(default=10, ge=1),
    offset: int = Query(default=0, ge=0, le=1_000_000),
    order: Literal["score", "created_at", "-created_at"] = "score",
    collection: str = "default",
) -> SearchResponse:
    started = time.perf_counter()
    query = SearchQuery(collection=collection, text=q, top_k=k, offset=offset, order=order)
    return await _run(search, query, response, started)
