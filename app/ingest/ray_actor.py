"""What runs in each actor of the Ray engine's pool: one encoder, loaded once, then batches read and embedded.

Ray is not imported here: an `EmbedActor` runs without Ray too, which is how the tests check it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from app.ingest.sources import Rejected, SourceItem
from app.ingest.writer import embed_unique
from app.media.objects import ObjectStorage
from app.settings import Settings


class EmbedActor:
    """One actor of the pool: a PEEncoder loaded once, then batches of items read, decoded and embedded.

    Settings travel in explicitly (an actor is another process, maybe on another machine):
    weights source, device, cache dir and URL policy are the driver's.
    """

    def __init__(self, *, settings: Settings, model: str, decode_threads: int = 2) -> None:
        from app.ingest.pipeline import Preparer
        from app.runtime.encoders import build_encoders

        # Torch's threads, where a tower runs on torch, are sized when the loader builds it (app/model/loading.py).
        encoders = build_encoders(settings)
        self.encoder = encoders.registry.get(model)
        self.preparer = Preparer(
            encoder=self.encoder,
            fetcher=encoders.fetcher,
            objects=ObjectStorage(settings.object_policy()),
            jpeg_draft=settings.ingest_jpeg_draft,
        )
        self.pool = ThreadPoolExecutor(decode_threads, thread_name_prefix="pe-ray-decode")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [
            SourceItem(
                uri=str(uri),
                path=Path(path) if path else None,
                url=str(url) if url else None,
                object_url=str(obj) if obj else None,
            )
            for uri, path, url, obj in zip(batch["uri"], batch["path"], batch["url"], batch["object"], strict=True)
        ]
        outcomes = list(self.pool.map(self.preparer.prepare, items))
        vectors = embed_unique(self.encoder, [(o.sha256, o.pixels) for o in outcomes if not isinstance(o, Rejected)])
        blank = np.zeros(self.encoder.variant.dim, dtype=np.float32)
        return {
            "n": np.asarray(batch["n"]),
            "error": np.array([o.reason if isinstance(o, Rejected) else "" for o in outcomes], dtype=object),
            "sha256": np.array([getattr(o, "sha256", "") for o in outcomes], dtype=object),
            "width": np.array([getattr(o, "width", 0) for o in outcomes], dtype=np.int64),
            "height": np.array([getattr(o, "height", 0) for o in outcomes], dtype=np.int64),
            "format": np.array([getattr(o, "format", None) or "" for o in outcomes], dtype=object),
            "byte_size": np.array([getattr(o, "byte_size", 0) for o in outcomes], dtype=np.int64),
            "vector": np.stack([blank if isinstance(o, Rejected) else vectors[o.sha256] for o in outcomes]).astype(
                np.float32, copy=False
            ),
        }
