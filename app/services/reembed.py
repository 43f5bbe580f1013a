"""Re-embed a collection with another model: stage every new vector, then switch in one transaction."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.errors import NotFoundError
from app.ingest.pipeline import Prepared, Preparer
from app.ingest.sources import Rejected, SourceItem
from app.media.fetch import UrlFetcher
from app.media.uploads import UploadFiles
from app.model.encoder import PEEncoder
from app.services.images import locate_image_file
from index.dto import CollectionInfo, ImageRecord
from index.store import VectorStore

log = logging.getLogger(__name__)


@dataclass
class ReembedResult:
    info: CollectionInfo | None = None
    failed: list[tuple[int, str]] = field(default_factory=list)


def _source(image: ImageRecord, store: VectorStore, uploads: UploadFiles) -> SourceItem:
    """Where the image's bytes are now, as an ingest item: the ingest Preparer reads and decodes it."""
    location = locate_image_file(image, store, uploads)
    if isinstance(location, str):
        return SourceItem(uri=image.uri, url=location)
    return SourceItem(uri=image.uri, path=Path(location))


def reembed_collection(
    *,
    store: VectorStore,
    encoder: PEEncoder,
    uploads: UploadFiles,
    fetcher: UrlFetcher,
    name: str,
    batch_size: int = 32,
    jpeg_draft: bool = True,
    progress: Callable[[int], None] | None = None,
) -> ReembedResult:
    """Nothing changes unless every image could be read again and embedded by the new model."""
    collection = store.collection(name)
    store.discard_staged(collection.id)
    result = ReembedResult()
    preparer = Preparer(encoder=encoder, fetcher=fetcher, jpeg_draft=jpeg_draft)

    def load(image: ImageRecord) -> tuple[int, Prepared | str]:
        try:
            prepared = preparer.prepare(_source(image, store, uploads))
        except NotFoundError as exc:
            return image.id, str(exc)
        if isinstance(prepared, Rejected):
            return image.id, prepared.reason
        if prepared.sha256 != image.sha256:
            return image.id, "the source's bytes changed since it was ingested"
        return image.id, prepared

    with ThreadPoolExecutor(4, thread_name_prefix="pe-reembed") as pool:
        for rows in store.iter_images(collection.id, batch_size):
            loaded = list(pool.map(load, rows))
            result.failed += [(image_id, out) for image_id, out in loaded if isinstance(out, str)]
            ready = [(image_id, out) for image_id, out in loaded if not isinstance(out, str)]
            if ready:
                vectors = encoder.embed_pixels([prepared.pixels for _, prepared in ready])
                store.stage_vectors(collection.id, [image_id for image_id, _ in ready], np.asarray(vectors))
            if progress:
                progress(len(rows))
    if result.failed:
        store.discard_staged(collection.id)
        return result
    result.info = store.switch_model(name, model=encoder.variant.version_id, dim=encoder.variant.dim)
    return result
