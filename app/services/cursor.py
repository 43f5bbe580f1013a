"""Paging cursors: the query's vector and options, signed, so the next page needs no re-encoding.

A cursor is `payload.mac`, both base64url: the payload is compressed JSON, the mac its
HMAC-SHA256 under the server's secret (PE_SEARCH_CURSOR_SECRET; a random one per process when
unset, so cursors then end with the process). It names the collection and its index generation:
after a rebuild or model switch, the next page is refused with a message to search again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import zlib
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from app.errors import CursorError
from index.filters import SearchFilter

# Well above what a search can produce (a 1280-d vector and a large filter), and what a request may send.
MAX_CURSOR_CHARS = 1_000_000
_MAX_PAYLOAD = 4 * MAX_CURSOR_CHARS
_MAC_BYTES = 16
_VERSION = 1


@dataclass(frozen=True)
class PageState:
    """What the next page of a search needs."""

    collection_id: int
    generation: int
    vector: np.ndarray
    offset: int
    top_k: int
    order: str = "score"
    candidates: int = 0
    min_score: float | None = None
    search_filter: SearchFilter | None = None
    knobs: dict[str, int] = field(default_factory=dict)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _filter_out(search_filter: SearchFilter | None) -> dict[str, Any] | None:
    if search_filter is None:
        return None
    out = asdict(search_filter)
    for key in ("created_after", "created_before"):
        if out[key] is not None:
            out[key] = out[key].isoformat()
    return out


def _filter_in(raw: dict[str, Any] | None) -> SearchFilter | None:
    if raw is None:
        return None
    for key in ("created_after", "created_before"):
        if raw.get(key) is not None:
            raw[key] = datetime.fromisoformat(raw[key])
    return SearchFilter(**raw)


class CursorCodec:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("a cursor secret needs at least 16 bytes")
        self._secret = secret

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()[:_MAC_BYTES]

    def encode(self, state: PageState) -> str:
        body = {
            "v": _VERSION,
            "c": state.collection_id,
            "g": state.generation,
            "q": _b64(np.asarray(state.vector, dtype="<f4").tobytes()),
            "o": state.offset,
            "k": state.top_k,
            "r": state.order,
            "n": state.candidates,
            "m": state.min_score,
            "f": _filter_out(state.search_filter),
            "x": state.knobs,
        }
        payload = zlib.compress(json.dumps(body, separators=(",", ":")).encode("utf-8"))
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def decode(self, token: str) -> PageState:
        if len(token) > MAX_CURSOR_CHARS or token.count(".") != 1:
            raise CursorError("The cursor is not one this server wrote: search again for a fresh one.")
        payload_text, mac_text = token.split(".")
        try:
            payload, mac = _unb64(payload_text), _unb64(mac_text)
        except (binascii.Error, ValueError) as exc:
            raise CursorError("The cursor is damaged: search again for a fresh one.") from exc
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise CursorError(
                "The cursor was not signed by this server (or the server restarted without PE_SEARCH_CURSOR_SECRET): "
                "search again for a fresh one."
            )
        try:
            inflater = zlib.decompressobj()
            text = inflater.decompress(payload, _MAX_PAYLOAD)
            if inflater.unconsumed_tail:
                raise ValueError("payload too large")
            body = json.loads(text)
            if not isinstance(body, dict) or body.get("v") != _VERSION:
                raise CursorError("The cursor is from another version of pe-search: search again.")
            return self._state(body)
        except (zlib.error, ValueError, KeyError, TypeError, AttributeError) as exc:
            # Signed by a server with this secret, yet unreadable here: another build's layout.
            raise CursorError("The cursor cannot be read by this server: search again for a fresh one.") from exc

    @staticmethod
    def _state(body: dict[str, Any]) -> PageState:
        return PageState(
            collection_id=body["c"],
            generation=body["g"],
            vector=np.frombuffer(_unb64(body["q"]), dtype="<f4").astype(np.float32),
            offset=body["o"],
            top_k=body["k"],
            order=body["r"],
            candidates=body["n"],
            min_score=body["m"],
            search_filter=_filter_in(body["f"]),
            knobs=body["x"],
        )
