"""Liveness and readiness, with what is loaded and from where."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app import __version__
from app.api.deps import RegistryDep, SettingsDep
from app.model.weights import describe_source

router = APIRouter(tags=["health"])


def _status(registry: RegistryDep, settings: SettingsDep) -> dict[str, Any]:
    return {
        "version": __version__,
        "default_model": registry.default_id,
        "ready": registry.ready,
        "weights": describe_source(settings.weights),
        "random_weights": settings.random_weights,
        "models": [asdict(info) for info in registry.loaded()],
        "load_error": registry.load_error,
    }


@router.get("/health", summary="Liveness: the process answers; reports loaded models")
async def health(registry: RegistryDep, settings: SettingsDep) -> dict[str, Any]:
    return {"status": "ok", **_status(registry, settings)}


@router.get(
    "/ready",
    summary="Readiness: 200 once the default model is loaded, 503 before (or if it failed)",
    responses={503: {"description": "The default model is not loaded yet, or failed to load"}},
)
async def ready(registry: RegistryDep, settings: SettingsDep) -> JSONResponse:
    ok = registry.ready
    body = {"status": "ready" if ok else "loading" if registry.load_error is None else "failed"}
    return JSONResponse(status_code=200 if ok else 503, content={**body, **_status(registry, settings)})
