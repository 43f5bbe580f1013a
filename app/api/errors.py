"""The one place domain errors become HTTP responses."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app.errors import (
    ForbiddenPathError,
    ImageLoadError,
    InvalidInputError,
    ModelUnavailableError,
    NotFoundError,
    PESearchError,
    TooManyItemsError,
    UnknownModelError,
)
from app.ingest.sources import SourceError
from index.errors import (
    CollectionExistsError,
    CollectionNotFoundError,
    ImageNotFoundError,
    InvalidFilterError,
    ModelMismatchError,
    StoreError,
)

log = logging.getLogger(__name__)

# Most specific first: the first matching class decides the status.
STATUS_BY_ERROR: list[tuple[type[Exception], int]] = [
    (TooManyItemsError, 413),
    (ImageLoadError, 400),
    (UnknownModelError, 400),
    (InvalidInputError, 400),
    (ModelUnavailableError, 503),
    (ForbiddenPathError, 403),
    (NotFoundError, 404),
    (CollectionNotFoundError, 404),
    (ImageNotFoundError, 404),
    (CollectionExistsError, 409),
    (ModelMismatchError, 409),
    (InvalidFilterError, 400),
    (SourceError, 400),
]


def status_for(exc: Exception) -> int:
    return next((status for cls, status in STATUS_BY_ERROR if isinstance(exc, cls)), 500)


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    status = status_for(exc)
    if status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc)
    return JSONResponse(status_code=status, content={"message": str(exc)})


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("Unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(status_code=500, content={"message": "Internal error."})


def install_error_handlers(app: FastAPI) -> None:
    for base in (PESearchError, StoreError, SourceError):
        app.add_exception_handler(base, _domain_error)
    app.add_exception_handler(Exception, _unexpected_error)
