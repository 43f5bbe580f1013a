"""Prometheus metrics of this app, in the text exposition format; no API key, like /health."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from app.api.deps import MetricsDep
from app.runtime.executor import run_blocking

router = APIRouter(include_in_schema=False)


@router.get("/metrics")
async def metrics(app_metrics: MetricsDep) -> Response:
    # Off the event loop: the store's collector reads the database.
    body, content_type = await run_blocking(app_metrics.render)
    return Response(body, media_type=content_type)
