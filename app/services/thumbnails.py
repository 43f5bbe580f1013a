"""Thumbnails, made on first request and cached under the data dir by content hash and size."""

from __future__ import annotations

from pathlib import Path

from PIL import Image as PILImage

from app.media.decode import decode_image
from app.media.fetch import UrlFetcher
from app.media.uploads import UploadFiles
from app.services.images import locate_image_file
from index.dto import ImageRecord
from index.files import atomic_write
from index.store import VectorStore

SIZES = (128, 256, 512)


def nearest_size(requested: int) -> int:
    """The smallest cached size at least as large as asked (the largest past the end)."""
    return next((size for size in SIZES if size >= requested), SIZES[-1])


class Thumbnails:
    def __init__(self, *, directory: Path, store: VectorStore, uploads: UploadFiles, fetcher: UrlFetcher) -> None:
        self.directory = directory
        self.store = store
        self.uploads = uploads
        self.fetcher = fetcher

    def path(self, image: ImageRecord, size: int) -> Path:
        """A JPEG no larger than size x size, aspect kept; made once per content and size."""
        target = self.directory / str(size) / image.sha256[:2] / f"{image.sha256}.jpg"
        if target.is_file():
            return target
        location = locate_image_file(image, self.store, self.uploads)
        data = self.fetcher.fetch(location) if isinstance(location, str) else location.read_bytes()
        thumbnail = decode_image(data)
        thumbnail.thumbnail((size, size), PILImage.Resampling.LANCZOS)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda tmp: thumbnail.save(tmp, "JPEG", quality=85, optimize=True))
        return target
