"""The one place domain errors become HTTP responses."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import (
    AuthError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    PESearchError,
    UnavailableError,
    UnprocessableQueryError,
    UnsupportedMediaError,
)

log = logging.getLogger(__name__)

# By category, most specific first: the first matching class decides the status. An error of
# no category (a StoreError such as an unwritable data dir) is a server fault: 500.
STATUS_BY_ERROR: list[tuple[type[Exception], int]] = [
    (AuthError, 401),
    (UnsupportedMediaError, 415),
    (PayloadTooLargeError, 413),
    (UnprocessableQueryError, 422),
    (InvalidInputError, 400),
    (PermissionDeniedError, 403),
    (NotFoundError, 404),
    (ConflictError, 409),
    (UnavailableError, 503),
]


def status_for(exc: Exception) -> int:
    return next((status for cls, status in STATUS_BY_ERROR if isinstance(exc, cls)), 500)


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    status = status_for(exc)
    if status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc)
    # RFC 7235: a 401 names the scheme the client should use.
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(status_code=status, content={"message": str(exc)}, headers=headers)


# Starlette types every handler as taking Exception; each is registered for one class, asserted below.


async def _refused_value(request: Request, exc: Exception) -> JSONResponse:
    """A value the database will not store that validation let through: the client's input, not a fault."""
    assert isinstance(exc, DataError)
    log.warning("%s %s: the database refused a value: %s", request.method, request.url.path, exc.orig)
    return JSONResponse(status_code=400, content={"message": "The database refused a value in the request."})


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("Unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(status_code=500, content={"message": "Internal error."})


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own 422 body, except that echoed NaN or infinity inputs are written as strings:
    the default handler would fail to serialise them and answer 500."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(status_code=422, content={"detail": _json_safe(jsonable_encoder(exc.errors()))})


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Framework errors (unknown route, unparseable body...) in the same `message` shape as ours."""
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse(status_code=exc.status_code, content={"message": str(exc.detail)}, headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(PESearchError, _domain_error)
    app.add_exception_handler(DataError, _refused_value)
    app.add_exception_handler(Exception, _unexpected_error)
