"""How the client puts values on the wire and reads the server's errors back."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from app.client.models import ImageInput


def error_message(response: requests.Response) -> tuple[str, Any]:
    """The server's `message`, or FastAPI's 422 `detail` as one line; else the raw body."""
    try:
        body = response.json()
    except ValueError:
        return (response.text.strip() or response.reason or "no message"), None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"], None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                where = ".".join(str(p) for p in item.get("loc", ()))
                parts.append(f"{where}: {item.get('msg', '')}" if where else str(item.get("msg", "")))
            else:
                parts.append(str(item))
        return "; ".join(parts) or "invalid request", detail
    if isinstance(detail, str):
        return detail, None
    return json.dumps(body), None


def is_url(image: ImageInput) -> bool:
    return isinstance(image, str) and image.startswith(("http://", "https://"))


def image_bytes(image: str | Path | bytes) -> bytes:
    return bytes(image) if isinstance(image, (bytes, bytearray)) else Path(image).read_bytes()


def image_object(image: ImageInput) -> dict[str, str]:
    if is_url(image):
        return {"type": "url", "value": str(image)}
    return {"type": "base64", "value": base64.b64encode(image_bytes(image)).decode("ascii")}


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value
