"""Near-duplicate images of a collection: find them, and resolve them to one per group."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from app.api.auth import ReadAccess, WriteAccess
from app.api.deps import DuplicatesDep
from app.api.duplicate_schemas import DuplicateGroupOut, DuplicatesResponse, SharedContentOut
from app.api.schemas import ErrorResponse
from app.api.store_schemas import ImageRecord
from app.services.duplicates import DuplicateReport

router = APIRouter(
    prefix="/collections/{name}/duplicates",
    tags=["duplicates"],
    responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}},
)

Threshold = Annotated[
    float | None, Query(ge=0.8, le=1, description="Cosine at or above which images are near-duplicates (default 0.99)")
]
Limit = Annotated[int, Query(ge=1, le=10_000, description="Groups returned, largest first")]
ResolveRule = Literal["keep-largest", "keep-oldest"]


def _response(report: DuplicateReport, started: float, deleted: int = 0) -> DuplicatesResponse:
    name = report.collection
    return DuplicatesResponse(
        collection=name,
        threshold=report.threshold,
        groups=[
            DuplicateGroupOut(
                images=[ImageRecord.of(i, name) for i in g.images],
                min_score=g.min_score,
                max_score=g.max_score,
                keep=g.keep,
                extras=list(g.extras),
            )
            for g in report.groups
        ],
        total_groups=report.total_groups,
        exact=[SharedContentOut(image=ImageRecord.of(e.image, name), uris=e.uris) for e in report.exact],
        deleted=deleted,
        time=time.perf_counter() - started,
    )


@router.get("", dependencies=[ReadAccess], response_model=DuplicatesResponse, summary="Groups of near-duplicate images")
async def find_duplicates(
    name: str,
    duplicates: DuplicatesDep,
    threshold: Threshold = None,
    limit: Limit = 100,
    resolve: Annotated[ResolveRule | None, Query(description="Name a keeper per group (nothing is deleted)")] = None,
) -> DuplicatesResponse:
    started = time.perf_counter()
    report = await duplicates.find(name, threshold=threshold, limit=limit, resolve=resolve)
    return _response(report, started)


@router.post(
    "/resolve",
    dependencies=[WriteAccess],
    response_model=DuplicatesResponse,
    summary="Keep one image per group (by the rule) and delete the others",
)
async def resolve_duplicates(
    name: str,
    duplicates: DuplicatesDep,
    resolve: Annotated[ResolveRule, Query(description="Which image of each group stays")],
    threshold: Threshold = None,
    limit: Limit = 100,
) -> DuplicatesResponse:
    started = time.perf_counter()
    report = await duplicates.find(name, threshold=threshold, limit=limit, resolve=resolve)
    deleted = await duplicates.delete_extras(report)
    return _response(report, started, deleted)
