"""The PE-Core model object: load once, then embed images and texts in batches, on whichever runtime serves.

Torch-free: preprocessing is NumPy and Pillow, tokenizing is `tokenizers`, and each tower comes from
`TowerLoader` (ONNX Runtime or OpenVINO from the export cache, or torch). Inputs and outputs are NumPy.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from app.model.loading import KINDS, ModelOptions, Tower, TowerLoader
from app.model.precision import TowerMode
from app.model.preprocess import PETransform, stack
from app.model.tokenizer import PETokenizer
from app.model.variants import Variant
from app.model.weights import HUB, RANDOM, describe_source

log = logging.getLogger(__name__)
# Called after each forward pass with (kind: "image" or "text", items in the pass, seconds).
ForwardObserver = Callable[[str, int, float], None]
# Items per forward pass when not set: a GPU needs large batches to stay busy, a CPU does not.
DEFAULT_BATCH = {"cpu": 32, "cuda": 256}


@dataclass(frozen=True)
class EncoderInfo:
    model: str
    dim: int
    device: str
    image_precision: str
    text_precision: str
    weights: str
    random_weights: bool
    # Per tower: the runtime, precision and measured cosine to torch fp32 (None until the tower loads).
    towers: dict[str, dict[str, Any]] = field(default_factory=dict)


class PEEncoder:
    """One PE-Core variant. `load()` once (or let the first `embed_*` of each kind load its tower),
    then `embed_*` from up to `workers` threads at a time."""

    def __init__(
        self,
        variant: Variant,
        *,
        weights: str = HUB,
        device: str = "auto",
        runtime: str = "auto",
        cache_dir: Path | None = None,
        export_dir: Path | None = None,
        batch_size: int | None = None,
        image_precision: str = "auto",
        text_precision: str = "auto",
        compile: bool = False,
        compile_backend: str = "inductor",
        threads: int = 0,
        workers: int = 1,
        on_forward: ForwardObserver | None = None,
    ) -> None:
        self.variant = variant
        self.weights = weights
        options = ModelOptions(
            weights=weights,
            device=device,
            runtime=runtime,
            cache_dir=cache_dir,
            export_dir=export_dir,
            image_precision=image_precision,
            text_precision=text_precision,
            compile=compile,
            compile_backend=compile_backend,
            threads=threads,
            workers=workers,
        )
        self.loader = TowerLoader(variant, options)  # checks the request: an impossible one fails here
        self.device = self.loader.device
        self.batch_size = batch_size or DEFAULT_BATCH.get(self.device, DEFAULT_BATCH["cpu"])
        self.workers = max(1, workers)
        self.transform = PETransform(variant.image_size)
        self.on_forward = on_forward
        self._towers: dict[str, Tower] = {}
        self._locks = {kind: threading.Lock() for kind in KINDS}
        # At most `workers` forward passes at once, whoever calls (the API's model threads, an ingest, the CLI).
        self._slots = threading.BoundedSemaphore(self.workers)

    @property
    def loaded(self) -> bool:
        return bool(self._towers)

    @property
    def tokenizer(self) -> PETokenizer:
        return self.loader.tokenizer()

    @property
    def modes(self) -> dict[str, TowerMode]:
        return {kind: tower.mode for kind, tower in self._towers.items()}

    @property
    def runtimes(self) -> dict[str, str]:
        return {kind: self._towers[kind].runtime if kind in self._towers else self.loader.plans[kind] for kind in KINDS}

    @property
    def info(self) -> EncoderInfo:
        towers: dict[str, dict[str, Any]] = {
            kind: {
                "runtime": self.runtimes[kind],
                "precision": tower.mode.precision if (tower := self._towers.get(kind)) else None,
                "cosine_to_fp32": tower.mode.cosine if tower else None,
            }
            for kind in KINDS
        }
        return EncoderInfo(
            model=self.variant.version_id,
            dim=self.variant.dim,
            device=self.device,
            image_precision=towers["image"]["precision"] or self.loader.options.image_precision,
            text_precision=towers["text"]["precision"] or self.loader.options.text_precision,
            weights=describe_source(self.weights),
            random_weights=self.weights == RANDOM,
            towers=towers,
        )

    @property
    def logit_scale(self) -> float:
        return self.loader.logit_scale()

    def load(self, kinds: Sequence[str] = KINDS) -> PEEncoder:
        """Load the given towers (both by default); idempotent and thread-safe."""
        missing = [kind for kind in kinds if kind not in self._towers]
        if len(missing) > 1:
            # Both towers at once: reading and compiling them is I/O and single-threaded in good part.
            with ThreadPoolExecutor(len(missing), thread_name_prefix="pe-load") as pool:
                list(pool.map(self.tower, missing))
        elif missing:
            self.tower(missing[0])
        self.loader.release_torch()
        if "text" in kinds:
            self.tokenizer  # noqa: B018 - loaded now, not on the first request
        return self

    def tower(self, kind: str) -> Tower:
        with self._locks[kind]:
            tower = self._towers.get(kind)
            if tower is None:
                began = time.perf_counter()
                tower = self._towers[kind] = self.loader.tower(kind)
                log.info("%s, loaded in %.1f s", self.loader.describe(kind, tower), time.perf_counter() - began)
            return tower

    def _require(self, kind: str) -> Tower:
        """The tower, loaded now if `load` did not: a text search need never load the image tower."""
        return self.tower(kind)

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        return stack([self.transform(image) for image in images])

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """L2-normalised float32 embeddings, shape (len(images), dim)."""
        tower = self._require("image")
        return self._batched(tower, images, self.preprocess)

    def embed_pixels(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """Like embed_images, for images already through `transform` (e.g. in decode threads)."""
        tower = self._require("image")
        return self._batched(tower, pixels, lambda chunk: stack(list(chunk)))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 embeddings, shape (len(texts), dim)."""
        tower = self._require("text")
        return self._batched(tower, texts, lambda chunk: self.tokenizer(list(chunk)))

    def _batched(self, tower: Tower, items: Sequence, prepare: Callable[[Sequence], np.ndarray]) -> np.ndarray:
        if not items:
            return np.zeros((0, self.variant.dim), dtype=np.float32)
        out = []
        with self._slots:
            for start in range(0, len(items), self.batch_size):
                chunk = items[start : start + self.batch_size]
                began = time.perf_counter()
                features = tower(prepare(chunk)).astype(np.float32, copy=False)
                out.append(_normalise(features))
                if self.on_forward is not None:
                    self.on_forward(tower.kind, len(chunk), time.perf_counter() - began)
        return np.concatenate(out)


def _normalise(features: np.ndarray) -> np.ndarray:
    """L2 normalisation in fp32, whatever precision the tower ran in (as torch's F.normalize, eps 1e-12)."""
    norms = np.linalg.norm(features, axis=-1, keepdims=True)
    return features / np.maximum(norms, np.float32(1e-12))
