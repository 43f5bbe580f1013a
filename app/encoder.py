"""The PE-Core model object: load once, then embed images and texts in batches."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image

from app.variants import PE_INTERPOLATION, PE_MEAN, PE_RESIZE_MODE, PE_STD, Variant
from app.weights import (
    HUB,
    RANDOM,
    RANDOM_WEIGHTS_SEED,
    describe_source,
    fetch_hub_checkpoint,
    load_weights_file,
)

log = logging.getLogger(__name__)
# Called after each forward pass with (kind: "image" or "text", items in the pass, seconds).
ForwardObserver = Callable[[str, int, float], None]


def pe_transform(image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """PE's inference transform: squash resize (bilinear, antialiased), [0, 1], mean = std = 0.5."""
    return open_clip.image_transform(
        image_size,
        is_train=False,
        mean=PE_MEAN,
        std=PE_STD,
        interpolation=PE_INTERPOLATION,
        resize_mode=PE_RESIZE_MODE,
    )


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"PE_SEARCH_DEVICE={device} but CUDA is not available on this host")
    return resolved


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init_warning() -> Iterator[None]:
    """open_clip warns of random init when weights are loaded after building, as here."""
    root = logging.getLogger()
    drop = _DropRandomInitWarning()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


@dataclass(frozen=True)
class EncoderInfo:
    model: str
    dim: int
    device: str
    dtype: str
    weights: str
    random_weights: bool


class PEEncoder:
    """One PE-Core variant on one device. `load()` once, then `embed_*` from one thread."""

    def __init__(
        self,
        variant: Variant,
        *,
        weights: str = HUB,
        device: str = "auto",
        cache_dir: Path | None = None,
        batch_size: int = 32,
        on_forward: ForwardObserver | None = None,
    ) -> None:
        self.variant = variant
        self.weights = weights
        self.device = resolve_device(device)
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.on_forward = on_forward
        self.transform = pe_transform(variant.image_size)
        self.tokenizer = open_clip.get_tokenizer(variant.open_clip_name)
        self._model: open_clip.CustomTextCLIP | None = None
        self._lock = threading.Lock()
        # One forward pass at a time, whoever calls (the API's model thread, an ingest job, the CLI):
        # each pass already uses every core.
        self._forward = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def info(self) -> EncoderInfo:
        autocast = self.device.type == "cuda"
        return EncoderInfo(
            model=self.variant.version_id,
            dim=self.variant.dim,
            device=str(self.device),
            dtype=f"autocast-{self._autocast_dtype()}".replace("torch.", "") if autocast else "float32",
            weights=describe_source(self.weights),
            random_weights=self.weights == RANDOM,
        )

    @property
    def logit_scale(self) -> float:
        return float(self._require_model().logit_scale.exp().item())

    def load(self) -> PEEncoder:
        """Build the architecture and load its weights; idempotent and thread-safe."""
        with self._lock:
            if self._model is None:
                self._model = self._build()
        return self

    def _build(self) -> open_clip.CustomTextCLIP:
        name = self.variant.open_clip_name
        if self.weights == RANDOM:
            log.warning(
                "Building %s with RANDOM weights: embeddings are meaningless. "
                "For tests and development only.",
                self.variant.version_id,
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_WEIGHTS_SEED)
                model = open_clip.create_model(name, pretrained=None)
        else:
            with _quiet_random_init_warning():
                model = open_clip.create_model(name, pretrained=None)
            path = fetch_hub_checkpoint(self.variant, self.cache_dir) if self.weights == HUB else self.weights
            load_weights_file(model, path)
            log.info("Loaded %s weights from %s", self.variant.version_id, path)
        return model.to(self.device).eval()

    def _require_model(self) -> open_clip.CustomTextCLIP:
        if self._model is None:
            raise RuntimeError(f"{self.variant.version_id} is not loaded; call load() first")
        return self._model

    def _autocast_dtype(self) -> torch.dtype:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        with torch.inference_mode():
            if self.device.type == "cuda":
                with torch.autocast("cuda", dtype=self._autocast_dtype()):
                    yield
            else:
                yield

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self.transform(image) for image in images])

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """L2-normalised float32 embeddings, shape (len(images), dim)."""
        model = self._require_model()
        return self._batched("image", images, lambda chunk: model.encode_image(self.preprocess(chunk).to(self.device), normalize=True))

    def embed_pixels(self, pixels: Sequence[torch.Tensor]) -> np.ndarray:
        """Like embed_images, for images already through `transform` (e.g. in decode threads)."""
        model = self._require_model()
        return self._batched("image", pixels, lambda chunk: model.encode_image(torch.stack(list(chunk)).to(self.device), normalize=True))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 embeddings, shape (len(texts), dim)."""
        model = self._require_model()
        return self._batched("text", texts, lambda chunk: model.encode_text(self.tokenizer(list(chunk)).to(self.device), normalize=True))

    def _batched(self, kind: str, items: Sequence, forward: Callable[[Sequence], torch.Tensor]) -> np.ndarray:
        if not items:
            return np.zeros((0, self.variant.dim), dtype=np.float32)
        out = []
        with self._forward, self._inference():
            for start in range(0, len(items), self.batch_size):
                chunk = items[start : start + self.batch_size]
                began = time.perf_counter()
                features = forward(chunk)
                # Re-normalise in fp32: under autocast the model's own normalisation ran in half precision.
                features = torch.nn.functional.normalize(features.float(), dim=-1)
                out.append(features.cpu().numpy())  # on CUDA, waits for the pass: the time below is real
                if self.on_forward is not None:
                    self.on_forward(kind, len(chunk), time.perf_counter() - began)
        return np.concatenate(out).astype(np.float32, copy=False)
