"""The access check every route depends on: the key Roboflow clients send, against the server's keys."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header, Query, Request

from app.api.deps import KeysDep, SettingsDep
from app.api.keys import Scope
from app.errors import AuthError, PermissionDeniedError


async def _body_key(request: Request) -> str | None:
    if not request.headers.get("content-type", "").startswith("application/json"):
        return None
    try:
        body = json.loads(await request.body() or b"null")
    except ValueError:
        return None
    key = body.get("api_key") if isinstance(body, dict) else None
    return key if isinstance(key, str) and key else None


def _bearer(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def require(scope: Scope) -> Callable[..., Awaitable[None]]:
    """A dependency checking the key Roboflow clients send: query, then Bearer header, then body."""

    async def check(
        request: Request,
        settings: SettingsDep,
        keys: KeysDep,
        api_key: Annotated[
            str | None, Query(description="API key; also accepted as a Bearer token or a body field")
        ] = None,
        authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> None:
        if scope == "write" and settings.read_only:
            raise PermissionDeniedError(
                "This server is read-only (PE_SEARCH_READ_ONLY): "
                "send ingests, uploads, edits and deletes to the writer."
            )
        if not keys.enabled:
            return
        key = api_key or _bearer(authorization) or await _body_key(request)
        if not key:
            raise AuthError(
                "An API key is required: pass ?api_key=, an `Authorization: Bearer` header, or a body `api_key`."
            )
        granted = keys.scope_of(key)
        if granted is None:
            raise AuthError("The API key is not valid.")
        if scope == "write" and granted != "write":
            raise PermissionDeniedError("This API key is read-only; ingesting, editing and deleting need a write key.")

    return check


ReadAccess = Depends(require("read"))
WriteAccess = Depends(require("write"))
