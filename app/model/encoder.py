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

from app.model import precision
from app.model.precision import TowerMode
from app.model.variants import PE_INTERPOLATION, PE_MEAN, PE_RESIZE_MODE, PE_STD, Variant
from app.model.weights import (
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
KINDS = ("image", "text")
# Items per forward pass when not set: a GPU needs large batches to stay busy, a CPU does not.
DEFAULT_BATCH = {"cpu": 32, "cuda": 256}
# Fixed inputs on which each reduced-precision mode is compared with fp32 before it is used.
PROBE_TEXTS = (
    "a photo of a dog",
    "a red car parked on a street at night",
    "two people hiking in the mountains",
    "a bowl of soup",
    "an aerial view of a city",
    "a close-up of a cat's face",
    "text on a white page",
    "a sunset",
)
PROBE_IMAGES = 8


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


def check_precision(requested: str, kind: str, device: torch.device) -> None:
    """Refuse a mode this device or tower cannot run, before any weights load."""
    if requested not in precision.PRECISIONS:
        raise ValueError(f"unknown {kind} precision {requested!r}; valid: {', '.join(precision.PRECISIONS)}")
    if requested == "int8" and device.type != "cpu":
        raise ValueError("int8 (dynamic quantisation) runs on the CPU only; use auto, fp16 or bf16 on CUDA")
    if requested == "fp16" and device.type == "cpu":
        raise ValueError("fp16 is for CUDA; on the CPU use bf16 or int8")
    if requested == "bf16" and device.type == "cpu" and not precision.cpu_has_native_bf16():
        log.warning("%s tower in bf16 on a CPU without native bf16: emulated, and slower than fp32", kind)


def probe_pixels(image_size: int, count: int = PROBE_IMAGES) -> torch.Tensor:
    """Deterministic smooth images, already normalised to PE's [-1, 1] input range."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.randn(count, 3, 8, 8, generator=generator)
    return torch.tanh(torch.nn.functional.interpolate(coarse, size=image_size, mode="bicubic", align_corners=False))


@dataclass(frozen=True)
class EncoderInfo:
    model: str
    dim: int
    device: str
    image_precision: str
    text_precision: str
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
        batch_size: int | None = None,
        image_precision: str = "auto",
        text_precision: str = "auto",
        compile: bool = False,
        compile_backend: str = "inductor",
        on_forward: ForwardObserver | None = None,
    ) -> None:
        self.variant = variant
        self.weights = weights
        self.device = resolve_device(device)
        self.cache_dir = cache_dir
        self.batch_size = batch_size or DEFAULT_BATCH.get(self.device.type, DEFAULT_BATCH["cpu"])
        self.requested = {"image": image_precision, "text": text_precision}
        for kind in KINDS:
            check_precision(self.requested[kind], kind, self.device)
        self.compile = compile
        self.compile_backend = compile_backend
        self.modes: dict[str, TowerMode] = {}
        self._towers: dict[str, torch.nn.Module] = {}
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
        return EncoderInfo(
            model=self.variant.version_id,
            dim=self.variant.dim,
            device=str(self.device),
            image_precision=self._mode("image").precision,
            text_precision=self._mode("text").precision,
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
                model = self._build()
                with torch.inference_mode():
                    self._towers = {kind: self._configure(model, kind) for kind in KINDS}
                self._model = model
        return self

    def _build(self) -> open_clip.CustomTextCLIP:
        name = self.variant.open_clip_name
        if self.weights == RANDOM:
            log.warning(
                "Building %s with RANDOM weights: embeddings are meaningless. For tests and development only.",
                self.variant.version_id,
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_WEIGHTS_SEED)
                model = open_clip.create_model(name, pretrained=None)
        else:
            model = open_clip.create_model(name, pretrained=None)
            path = fetch_hub_checkpoint(self.variant, self.cache_dir) if self.weights == HUB else self.weights
            load_weights_file(model, path)
            log.info("Loaded %s weights from %s", self.variant.version_id, path)
        return model.to(self.device).eval()

    def _require_model(self) -> open_clip.CustomTextCLIP:
        if self._model is None:
            raise RuntimeError(f"{self.variant.version_id} is not loaded; call load() first")
        return self._model

    def _mode(self, kind: str) -> TowerMode:
        return self.modes.get(kind) or TowerMode(self.requested[kind])

    def _configure(self, model: open_clip.CustomTextCLIP, kind: str) -> torch.nn.Module:
        """Choose the tower's precision against fp32 on the probe set, then compile it if asked."""
        fp32 = model.visual if kind == "image" else model.text
        probe = probe_pixels(self.variant.image_size) if kind == "image" else self.tokenizer(list(PROBE_TEXTS))
        probe = probe.to(self.device)
        towers = {"fp32": fp32}

        def embed(mode: str) -> torch.Tensor:
            if mode == "int8" and mode not in towers:
                towers[mode] = precision.quantize_int8(fp32, text=kind == "text")
            with precision.autocast(self.device, mode):
                return towers.get(mode, fp32)(probe).float()

        self.modes[kind] = mode = precision.choose(self.requested[kind], kind=kind, device=self.device, embed=embed)
        log.info(
            "%s %s tower runs in %s (cosine to fp32 on probe set: %s)",
            self.variant.version_id,
            kind,
            mode.precision,
            "n/a" if mode.cosine is None else f"{mode.cosine:.5f}",
        )
        tower = towers.get(mode.precision, fp32)
        if tower is not fp32:
            # The quantised copy replaces the fp32 tower, whose memory is then freed.
            setattr(model, "visual" if kind == "image" else "text", tower)
        if self.compile:
            # dynamic: batch sizes vary from pass to pass, and must not each trigger a recompile.
            tower = torch.compile(tower, dynamic=True, backend=self.compile_backend)
            with precision.autocast(self.device, mode.precision):
                tower(probe)  # compile now, not on the first request
        return tower

    @contextlib.contextmanager
    def _inference(self, kind: str) -> Iterator[None]:
        with torch.inference_mode(), precision.autocast(self.device, self.modes[kind].precision):
            yield

    def _to_device(self, batch: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return batch
        # Pinned host memory lets the copy run asynchronously, overlapping the next batch's stacking.
        return batch.pin_memory().to(self.device, non_blocking=True)

    def _forward_tower(self, kind: str, batch: torch.Tensor) -> torch.Tensor:
        return self._towers[kind](self._to_device(batch))

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self.transform(image) for image in images])

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """L2-normalised float32 embeddings, shape (len(images), dim)."""
        self._require_model()
        return self._batched("image", images, lambda chunk: self._forward_tower("image", self.preprocess(chunk)))

    def embed_pixels(self, pixels: Sequence[torch.Tensor]) -> np.ndarray:
        """Like embed_images, for images already through `transform` (e.g. in decode threads)."""
        self._require_model()
        return self._batched("image", pixels, lambda chunk: self._forward_tower("image", torch.stack(list(chunk))))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 embeddings, shape (len(texts), dim)."""
        self._require_model()
        return self._batched("text", texts, lambda chunk: self._forward_tower("text", self.tokenizer(list(chunk))))

    def _batched(self, kind: str, items: Sequence, forward: Callable[[Sequence], torch.Tensor]) -> np.ndarray:
        if not items:
            return np.zeros((0, self.variant.dim), dtype=np.float32)
        out = []
        with self._forward, self._inference(kind):
            for start in range(0, len(items), self.batch_size):
                chunk = items[start : start + self.batch_size]
                began = time.perf_counter()
                features = forward(chunk)
                # Normalised in fp32, whatever precision the tower ran in.
                features = torch.nn.functional.normalize(features.float(), dim=-1)
                out.append(features.cpu().numpy())  # on CUDA, waits for the pass: the time below is real
                if self.on_forward is not None:
                    self.on_forward(kind, len(chunk), time.perf_counter() - began)
        return np.concatenate(out).astype(np.float32, copy=False)
