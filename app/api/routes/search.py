"""Text-to-image and image-to-image search."""

from __future__ import annotations

import time

from fastapi import APIRouter, Query, Response

from app.api.deps import ReadAccess, SearchDep, SettingsDep
from app.api.schemas import ErrorResponse
from app.api.store_schemas import SearchRequest, SearchResponse
from app.services.search import SearchQuery, Timing, result_dict
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


async def _run(search: SearchDep, query: SearchQuery, response: Response, started: float) -> SearchResponse:
    results, timing = await search.search(query)
    total = time.perf_counter() - started
    response.headers["Server-Timing"] = _server_timing(timing, total)
    return SearchResponse(results=[result_dict(r) for r in results], collection=query.collection, time=total)


@router.post("/search", response_model=SearchResponse, summary="Search a collection by text, image, or a stored image's id")
async def search_post(body: SearchRequest, search: SearchDep, settings: SettingsDep, response: Response) -> SearchResponse:
    started = time.perf_counter()
    search_filter = SearchFilter(**body.filter.model_dump()) if body.filter else None
    knobs = {k: v for k, v in (("ef_search", body.ef_search), ("nprobe", body.nprobe)) if v}
    query = SearchQuery(
        collection=body.collection,
        text=body.text,
        image=body.image,
        image_id=body.image_id,
        top_k=min(body.top_k, settings.max_top_k),
        search_filter=search_filter,
        min_score=body.min_score,
        model=body.perception_encoder_version_id,
        knobs=knobs,
    )
    return await _run(search, query, response, started)


@router.get("/search", response_model=SearchResponse, summary="Text search, for browsers and curl")
async def search_get(
    search: SearchDep,
    settings: SettingsDep,
    response: Response,
    q: str = Query(min_length=1, description="What to look for"),
    k: int = Query(default=10, ge=1),
    collection: str = "default",
) -> SearchResponse:
    started = time.perf_counter()
    query = SearchQuery(collection=collection, text=q, top_k=min(k, settings.max_top_k))
    return await _run(search, query, response, started)
