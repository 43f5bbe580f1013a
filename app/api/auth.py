"""API keys: read-only keys may embed and search; write keys may also ingest, edit and delete."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Header, Query, Request

from app.errors import AuthError, PermissionDeniedError
from app.settings import Settings

Scope = Literal["read", "write"]


def _split(raw: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in raw.split(",") if k.strip())


@dataclass(frozen=True)
class KeyRing:
    write: tuple[str, ...] = ()
    read: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        write, read = list(_split(settings.api_keys)), list(_split(settings.read_api_keys))
        if settings.api_keys_file is not None:
            for number, line in enumerate(settings.api_keys_file.read_text().splitlines(), start=1):
                parts = line.split("#", 1)[0].split()
                if not parts:
                    continue
                scope = parts[1] if len(parts) > 1 else "write"
                if scope not in ("read", "write") or len(parts) > 2:
                    raise ValueError(f"{settings.api_keys_file}:{number}: expected `KEY [read|write]`")
                (write if scope == "write" else read).append(parts[0])
        return cls(tuple(write), tuple(read))

    @property
    def enabled(self) -> bool:
        return bool(self.write or self.read)

    def scope_of(self, key: str) -> Scope | None:
        """Compares against every key in constant time, so timing reveals neither key nor match."""
        candidate = key.encode()
        is_write = any([hmac.compare_digest(candidate, k.encode()) for k in self.write])
        is_read = any([hmac.compare_digest(candidate, k.encode()) for k in self.read])
        return "write" if is_write else "read" if is_read else None


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
        api_key: Annotated[str | None, Query(description="API key; also accepted as a Bearer token or a body field")] = None,
        authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> None:
        if scope == "write" and request.app.state.settings.read_only:
            raise PermissionDeniedError(
                "This server is read-only (PE_SEARCH_READ_ONLY): send ingests, uploads, edits and deletes to the writer."
            )
        keys: KeyRing = request.app.state.keys
        if not keys.enabled:
            return
        key = api_key or _bearer(authorization) or await _body_key(request)
        if not key:
            raise AuthError("An API key is required: pass ?api_key=, an `Authorization: Bearer` header, or a body `api_key`.")
        granted = keys.scope_of(key)
        if granted is None:
            raise AuthError("The API key is not valid.")
        if scope == "write" and granted != "write":
            raise PermissionDeniedError("This API key is read-only; ingesting, editing and deleting need a write key.")

    return check
