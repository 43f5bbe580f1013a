"""Folders of real image files (and some that are not images) to ingest, and an ingestor over a store."""

from __future__ import annotations

from pathlib import Path

from app.ingest.pipeline import Ingestor
from app.media.fetch import UrlFetcher, UrlPolicy
from app.model.encoder import PEEncoder
from index.store import VectorStore
from tests.support.images import encode, photo

FORMATS = [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("GIF", "gif"), ("BMP", "bmp"), ("TIFF", "tiff")]


def make_folder(root: Path, count: int = 12) -> list[Path]:
    """`count` images in six formats (some nested, one upper-case extension), plus a text file,
    a corrupt JPEG and an empty PNG; returns the images' paths."""
    paths = []
    for i in range(count):
        fmt, ext = FORMATS[i % len(FORMATS)]
        path = root / ("nested/deeper" if i % 3 == 0 else "") / f"photo{i}.{ext.upper() if i == 5 else ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(photo(200 + 8 * i, 150, seed=100 + i), fmt))
        paths.append(path)
    (root / "notes.txt").write_text("not an image, not even tried")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this JPEG stops here")
    (root / "empty.png").write_bytes(b"")
    return paths


def ingestor(store: VectorStore, encoder: PEEncoder, batch_size: int = 4) -> Ingestor:
    """An ingestor that may fetch from loopback test servers."""
    policy = UrlPolicy(allow_http=True, allow_ip_hosts=True, allow_private_hosts=True)
    return Ingestor(store=store, encoder=encoder, fetcher=UrlFetcher(policy), batch_size=batch_size, workers=2)
