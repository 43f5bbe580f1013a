"""Single images: uploads (stored content-addressed), files to serve, metadata edits, deletes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.errors import NotFoundError
from app.media.decode import decode_image, image_format
from app.media.fetch import is_http_url
from app.media.image_ref import ImageRef
from app.media.uploads import UPLOAD_SCHEME, UploadFiles
from app.runtime.executor import run_blocking
from app.services.embedding import Embedder
from index.dto import ImageRecord, NewImage
from index.store import VectorStore


@dataclass(frozen=True)
class Added:
    id: int
    created: bool
    collection: str


class ImageService:
    def __init__(self, *, store: VectorStore, embedder: Embedder, uploads: UploadFiles) -> None:
        self.store = store
        self.embedder = embedder
        self.uploads = uploads

    async def add_upload(self, data: bytes, *, collection: str, metadata: dict[str, Any], model: str | None) -> Added:
        """Store an uploaded image (or find the stored copy of the same bytes) and index it."""
        encoder = await self.embedder.encoder(model or await run_blocking(self.store.model_of, collection))
        info = await run_blocking(
            self.store.ensure_collection, collection, model=encoder.variant.version_id, dim=encoder.variant.dim
        )
        image = await run_blocking(decode_image, data)
        sha256 = hashlib.sha256(data).hexdigest()
        existing = await run_blocking(self.store.existing_shas, info.id, [sha256])
        if sha256 in existing:
            return Added(existing[sha256], False, collection)
        pixels = await run_blocking(encoder.transform, image)
        vector = (await self.embedder.embed_pixels(encoder, [pixels]))[0]
        await run_blocking(self.uploads.save, data, sha256)
        row = NewImage(
            sha256=sha256,
            uri=f"{UPLOAD_SCHEME}{sha256}",
            width=image.width,
            height=image.height,
            format=image_format(data),
            byte_size=len(data),
            vector=vector,
            meta=metadata,
        )
        [(image_id, created)] = await run_blocking(self.store.add_images, info.id, [row])
        return Added(image_id, created, collection)

    async def read(self, ref: ImageRef) -> bytes:
        """The bytes of an image object sent to be stored (fetched, for a URL, under the URL policy)."""
        return await self.embedder.image_bytes(ref)

    def file_location(self, image: ImageRecord) -> Path | str:
        return locate_image_file(image, self.store, self.uploads)


def locate_image_file(image: ImageRecord, store: VectorStore, uploads: UploadFiles) -> Path | str:
    """A stored image's bytes: a local path (uploads; files still under their ingest root) or its URL."""
    if image.uri.startswith(UPLOAD_SCHEME):
        path = uploads.path(image.uri[len(UPLOAD_SCHEME) :])
        if path.is_file():
            return path
        raise NotFoundError(f"The stored upload of image {image.id} is missing.")
    if is_http_url(image.uri):
        return image.uri
    root = store.source_root(image.id, image.uri)
    try:
        real = Path(image.uri).resolve(strict=True)
    except OSError:
        raise NotFoundError(f"The file of image {image.id} is no longer at {image.uri}.") from None
    # Served only while the file still lies under the folder it was ingested from.
    if root is None or not real.is_relative_to(Path(root)) or not real.is_file():
        raise NotFoundError(f"The file of image {image.id} is no longer under its ingest root.")
    return real
