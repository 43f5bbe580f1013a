"""Search cursors as pure functions: a round trip, and every kind of bad token refused with CursorError."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import zlib
from datetime import UTC, datetime

import numpy as np
import pytest

from app.errors import CursorError
from app.services.cursor import CursorCodec, PageState
from index.filters import SearchFilter

SECRET = b"s" * 32


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(payload: bytes, secret: bytes = SECRET) -> str:
    """A token with a valid signature over any payload: what a build sharing the secret could send."""
    return f"{b64(payload)}.{b64(hmac.new(secret, payload, hashlib.sha256).digest()[:16])}"


def test_a_cursor_carries_the_whole_page_state() -> None:
    codec = CursorCodec(SECRET)
    state = PageState(
        collection_id=7,
        generation=3,
        vector=np.random.default_rng(0).standard_normal(1280).astype(np.float32),
        offset=48,
        top_k=24,
        order="-created_at",
        candidates=200,
        min_score=0.2,
        search_filter=SearchFilter(
            metadata={"label": ["dog", 3]}, uri_prefix="/srv", created_after=datetime(2025, 1, 2, tzinfo=UTC)
        ),
        knobs={"ef_search": 64},
    )
    back = codec.decode(codec.encode(state))
    np.testing.assert_array_equal(back.vector, state.vector)  # bit for bit: the next page ranks the same
    assert {k: v for k, v in back.__dict__.items() if k != "vector"} == {
        k: v for k, v in state.__dict__.items() if k != "vector"
    }


@pytest.mark.parametrize(
    "token",
    [
        "",
        "no-dot",
        "a.b.c",
        "!!!.???",
        signed(b"not zlib at all"),
        signed(zlib.compress(b"[1, 2, 3]")),
        signed(zlib.compress(json.dumps({"v": 1, "c": 1}).encode())),  # fields missing
        signed(zlib.compress(json.dumps({"v": 99}).encode())),
        signed(zlib.compress(b"\0" * 20_000_000)),  # a decompression bomb: refused, not inflated
        signed(zlib.compress(b"{}"), secret=b"o" * 32),  # another server's secret
        "A" * 1_000_001,
    ],
)
def test_bad_cursors_are_refused_with_a_message(token: str) -> None:
    with pytest.raises(CursorError, match="search again"):
        CursorCodec(SECRET).decode(token)


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        CursorCodec(b"short")
