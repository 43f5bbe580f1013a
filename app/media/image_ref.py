"""The spec's image objects (`{"type": ..., "value": ...}`) as domain values, and their loading into RGB images."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from PIL import Image

from app.errors import ImageLoadError
from app.media.decode import decode_image
from app.media.fetch import UrlFetcher

_DATA_URL_PREFIX = re.compile(r"^data:[^,;]*(;[^,;]*)*;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")
# Either alphabet: unpadded standard base64 (with + and /) must reach the lenient decode too.
_ANY_B64 = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")


@dataclass(frozen=True)
class ImageRef:
    """One image as a client names it: `kind` base64 or url (any case), and the text or URL.

    The HTTP schema's ImageObject converts to this, so nothing below the API depends on pydantic models.
    """

    kind: str
    value: Any


def decode_base64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ImageLoadError("a base64 image value must be a string")
    text = _WHITESPACE.sub("", _DATA_URL_PREFIX.sub("", value.strip(), count=1))
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        pass
    # Some clients send URL-safe base64 or drop the padding.
    if _ANY_B64.fullmatch(text):
        try:
            return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            pass
    raise ImageLoadError("the value is not valid base64")


class ImageLoader:
    """Loads one image object of any accepted type; blocking (decode, network)."""

    def __init__(
        self, fetcher: UrlFetcher, *, max_bytes: int = 20 * 1024 * 1024, max_pixels: int | None = None
    ) -> None:
        self.fetcher = fetcher
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels

    def load(self, kind: str, value: Any) -> Image.Image:
        return decode_image(self.load_bytes(kind, value), self.max_pixels)

    def load_ref(self, ref: ImageRef | str) -> Image.Image:
        """An image object, or a bare string meant as an image (see load_bare)."""
        return self.load(ref.kind, ref.value) if isinstance(ref, ImageRef) else self.load_bare(ref)

    def ref_bytes(self, ref: ImageRef) -> bytes:
        return self.load_bytes(ref.kind, ref.value)

    def load_bytes(self, kind: str, value: Any) -> bytes:
        """The encoded image bytes an image object names, not yet decoded."""
        kind = kind.lower()
        if kind == "base64":
            # Checked on the text, before decoding allocates anything.
            if isinstance(value, str) and len(value) > self.max_bytes * 4 // 3 + 64:
                raise ImageLoadError(f"the image is larger than {self.max_bytes} bytes (PE_SEARCH_MAX_IMAGE_BYTES)")
            return decode_base64(value)
        if kind == "url":
            if not isinstance(value, str):
                raise ImageLoadError("a url image value must be a string")
            return self.fetcher.fetch(value)
        if kind in ("numpy", "numpy_object"):
            raise ImageLoadError(
                "numpy image inputs are disabled: unpickling client data would let any client "
                "run code on the server. Send the image as base64 instead."
            )
        raise ImageLoadError(f"unsupported image type {kind!r}; use 'base64' or 'url'")

    def load_bare(self, value: str) -> Image.Image:
        """A bare string meant as an image (compare): a URL if it starts with http, else base64.

        The spec's rule, looser than is_http_url on purpose: Roboflow's server decides this way.
        """
        return self.load("url" if value.startswith("http") else "base64", value)
