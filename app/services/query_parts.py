"""Composed queries: a weighted sum of texts, images, stored images and raw vectors, normalised.

All text parts go to the model as one batch and all image parts as another, so a query of three
texts costs one forward pass, not three. An error names the part that caused it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.errors import (
    InvalidInputError,
    PayloadTooLargeError,
    PESearchError,
    TooManyItemsError,
    UnprocessableQueryError,
)
from app.media.image_ref import ImageRef
from app.runtime.executor import run_blocking
from app.services.embedding import Embedder
from index.dto import CollectionInfo
from index.errors import ModelMismatchError
from index.store import VectorStore

# Below this norm the parts cancel out: the direction left is rounding noise.
MIN_NORM = 1e-4


@dataclass(frozen=True)
class QueryPart:
    """One term of a query: exactly one of text, image, image_id or vector, times `weight`."""

    weight: float = 1.0
    text: str | None = None
    image: ImageRef | None = None
    image_id: int | None = None
    vector: tuple[float, ...] | None = None

    @property
    def kind(self) -> str:
        given = [k for k in ("text", "image", "image_id", "vector") if getattr(self, k) is not None]
        if len(given) != 1:
            raise InvalidInputError(f"A query part takes exactly one of text, image, image_id or vector (got {given}).")
        return given[0]


def relabel(exc: PESearchError, label: str | None) -> PESearchError:
    """The same error (class, so HTTP status, and attributes) with `label: ` before its message."""
    if label is None:
        return exc
    out = Exception.__new__(type(exc))
    out.__dict__.update(exc.__dict__)
    out.args = (f"{label}: {exc}",)
    return out


def check_parts(parts: Sequence[QueryPart], max_items: int) -> None:
    if not parts:
        raise UnprocessableQueryError("The query is empty: give a text, an image, an image_id, a vector or parts.")
    if len(parts) > max_items:
        raise TooManyItemsError(len(parts), max_items)
    for number, part in enumerate(parts, 1):
        try:
            part.kind  # noqa: B018 - validates that the part has exactly one field
        except InvalidInputError as exc:
            raise UnprocessableQueryError(f"part {number}: {exc}") from exc
        if not math.isfinite(part.weight):
            raise UnprocessableQueryError(f"part {number}: the weight must be a finite number.")
    if not any(p.weight > 0 for p in parts):
        raise UnprocessableQueryError(
            "The query has no positive part: negative parts only say what to move away from; add something to find."
        )


def label(number: int, part: QueryPart, of: int) -> str | None:
    """How an error names its part; a one-part query's errors read as they always have."""
    return f"part {number} ({part.kind})" if of > 1 else None


class QueryComposer:
    def __init__(self, *, store: VectorStore, embedder: Embedder) -> None:
        self.store = store
        self.embedder = embedder

    async def vector(self, info: CollectionInfo, parts: Sequence[QueryPart]) -> np.ndarray:
        """The unit vector of the weighted sum of the parts, in the collection's model's space."""
        check_parts(parts, self.embedder.max_items)
        rows = np.zeros((len(parts), info.dim), np.float32)
        named = [(i, p, label(i + 1, p, len(parts))) for i, p in enumerate(parts)]
        texts = [(i, p.text, name) for i, p, name in named if p.text is not None]
        images = [(i, p.image, name) for i, p, name in named if p.image is not None]
        if texts:
            self._check_texts([(text, name) for _, text, name in texts])
            rows[[i for i, _, _ in texts]] = await self.embedder.embed_texts(info.model, [t for _, t, _ in texts])
        if images:
            rows[[i for i, _, _ in images]] = await self._images(info, [(image, name) for _, image, name in images])
        for i, part, name in named:
            if part.image_id is not None:
                rows[i] = await self._stored(info, part.image_id, name)
            elif part.vector is not None:
                rows[i] = raw_vector(part.vector, info, name or "vector")
        weights = np.asarray([p.weight for p in parts], np.float32)
        combined = weights @ rows
        norm = float(np.linalg.norm(combined))
        if not norm > MIN_NORM:
            raise UnprocessableQueryError("The parts cancel out: their weighted sum is (nearly) zero.")
        return (combined / norm).astype(np.float32)

    def _check_texts(self, texts: Sequence[tuple[str, str | None]]) -> None:
        limit = self.embedder.max_text_chars
        for text, name in texts:
            if len(text) > limit:
                raise PayloadTooLargeError(
                    f"{name or 'text'}: the text has {len(text)} characters; at most {limit} are accepted "
                    "(PE_SEARCH_MAX_TEXT_CHARS)."
                )

    async def _images(self, info: CollectionInfo, images: Sequence[tuple[ImageRef, str | None]]) -> np.ndarray:
        encoder = await self.embedder.encoder(info.model)

        async def load(image: ImageRef, name: str | None) -> np.ndarray:
            try:
                return (await self.embedder.load_pixels(encoder, [image]))[0]
            except PESearchError as exc:
                raise relabel(exc, name) from exc

        pixels = await asyncio.gather(*(load(image, name) for image, name in images))
        return await self.embedder.embed_pixels(encoder, pixels)

    async def _stored(self, info: CollectionInfo, image_id: int, name: str | None) -> np.ndarray:
        try:
            collection_id, vector = await run_blocking(self.store.vector, image_id)
        except PESearchError as exc:
            raise relabel(exc, name) from exc
        if collection_id != info.id:
            other = next((c for c in await run_blocking(self.store.collections) if c.id == collection_id), None)
            if other is not None and other.model != info.model:
                raise relabel(ModelMismatchError(info.name, info.model, info.dim, other.model), name)
        return vector


def raw_vector(values: Sequence[float], info: CollectionInfo, what: str = "vector") -> np.ndarray:
    """A client's vector: the collection's length, finite, not zero; returned unit-norm."""
    if len(values) != info.dim:
        raise UnprocessableQueryError(
            f"{what} has {len(values)} values but collection {info.name!r} ({info.model}) holds {info.dim}-d vectors."
        )
    vector = np.asarray(values, dtype=np.float64)
    if not np.isfinite(vector).all():
        raise UnprocessableQueryError(f"{what} holds NaN or infinite values.")
    norm = float(np.linalg.norm(vector))
    if not norm > 0 or not math.isfinite(norm):
        raise UnprocessableQueryError(f"{what} is all zeros (or too large to normalise): it points nowhere.")
    return (vector / norm).astype(np.float32)
