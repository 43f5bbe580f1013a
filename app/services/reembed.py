"""Re-embed a collection with another model: stage every new vector, then switch in one transaction."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.model.encoder import PEEncoder
from app.errors import ImageLoadError, NotFoundError
from app.media.fetch import UrlFetcher
from app.services.images import UploadFiles, locate_image_file
from app.media.decode import decode_image
from index.models import Image
from index.store import CollectionInfo, VectorStore

log = logging.getLogger(__name__)


@dataclass
class ReembedResult:
    info: CollectionInfo | None = None
    failed: list[tuple[int, str]] = field(default_factory=list)


def reembed_collection(
    *,
    store: VectorStore,
    encoder: PEEncoder,
    uploads: UploadFiles,
    fetcher: UrlFetcher,
    name: str,
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> ReembedResult:
    """Nothing changes unless every image could be read again and embedded by the new model."""
    collection = store.collection(name)
    store.discard_staged(collection.id)
    result = ReembedResult()

    def load(image: Image):  # noqa: ANN202 - (image id, pixels) or (image id, failure reason)
        try:
            location = locate_image_file(image, store, uploads)
            data = fetcher.fetch(location) if isinstance(location, str) else Path(location).read_bytes()
            if hashlib.sha256(data).hexdigest() != image.sha256:
                return image.id, None, "the source's bytes changed since it was ingested"
            return image.id, encoder.transform(decode_image(data)), None
        except (NotFoundError, ImageLoadError, OSError) as exc:
            return image.id, None, str(exc)

    with ThreadPoolExecutor(4, thread_name_prefix="pe-reembed") as pool:
        for rows in store.iter_images(collection.id, batch_size):
            loaded = list(pool.map(load, rows))
            result.failed += [(image_id, reason) for image_id, _, reason in loaded if reason]
            ready = [(image_id, pixels) for image_id, pixels, reason in loaded if not reason]
            if ready:
                vectors = encoder.embed_pixels([pixels for _, pixels in ready])
                store.stage_vectors(collection.id, [image_id for image_id, _ in ready], np.asarray(vectors))
            if progress:
                progress(len(rows))
    if result.failed:
        store.discard_staged(collection.id)
        return result
    result.info = store.switch_model(name, model=encoder.variant.version_id, dim=encoder.variant.dim)
    return result
