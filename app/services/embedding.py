"""What the embedding routes do: validate counts, load images, run the model, score."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.errors import InvalidInputError, PayloadTooLargeError, TooManyItemsError
from app.media.image_ref import ImageLoader, ImageRef
from app.model.encoder import PEEncoder
from app.model.registry import ModelRegistry
from app.runtime.batcher import MicroBatcher
from app.runtime.executor import run_blocking

# A bare string is a text, or (compare's subject or prompt of type image) a URL or base64 image.
PromptItem = ImageRef | str


@dataclass(frozen=True)
class Prompts:
    """A prompt of any accepted shape, flattened; `shape` rebuilds the answer in the same shape."""

    items: list[PromptItem]
    keys: list[str] | None = None

    @classmethod
    def parse(cls, prompt: Any) -> Prompts:
        if isinstance(prompt, dict):
            return cls(items=list(prompt.values()), keys=list(prompt.keys()))
        if isinstance(prompt, list):
            return cls(items=list(prompt))
        return cls(items=[prompt])

    def shape(self, scores: Sequence[float] | np.ndarray) -> list[float] | dict[str, float]:
        values = [float(s) for s in scores]
        return dict(zip(self.keys, values, strict=True)) if self.keys is not None else values


@dataclass(frozen=True)
class ClassScores:
    names: list[str]
    similarity: np.ndarray
    probability: np.ndarray
    logit_scale: float


class Embedder:
    def __init__(
        self,
        registry: ModelRegistry,
        loader: ImageLoader,
        batcher: MicroBatcher,
        *,
        max_items: int,
        max_text_chars: int = 10_000,
        text_cache_size: int = 0,
    ) -> None:
        self.registry = registry
        self.loader = loader
        self.max_items = max_items
        self.max_text_chars = max_text_chars
        self.batcher = batcher
        self.text_cache = TextCache(text_cache_size)

    def _check_texts(self, texts: Sequence[str]) -> None:
        # Long texts are truncated by the tokenizer; megabytes of text are refused before tokenizing.
        for index, text in enumerate(texts):
            if len(text) > self.max_text_chars:
                raise PayloadTooLargeError(
                    f"Text {index} has {len(text)} characters; at most {self.max_text_chars} are accepted "
                    "(PE_SEARCH_MAX_TEXT_CHARS)."
                )

    def _check_count(self, count: int, what: str) -> None:
        if count == 0:
            raise InvalidInputError(f"{what} is empty: send at least one item")
        if count > self.max_items:
            raise TooManyItemsError(count, self.max_items)

    async def encoder(self, version_id: str | None) -> PEEncoder:
        # Towers not loaded yet load on first use, on the model thread: a text search never loads the image tower.
        return await run_blocking(self.registry.get, version_id, towers=())

    async def load_pixels(self, encoder: PEEncoder, items: Sequence[PromptItem]) -> list[np.ndarray]:
        """Fetch, decode and PE-preprocess each image in a worker thread, off the model thread."""

        def load(item: PromptItem) -> np.ndarray:
            return encoder.transform(self.loader.load_ref(item))

        return list(await asyncio.gather(*(run_blocking(load, item) for item in items)))

    async def embed_images(self, version_id: str | None, images: Sequence[ImageRef]) -> np.ndarray:
        self._check_count(len(images), "image")
        encoder = await self.encoder(version_id)
        return await self.batcher.images(encoder, await self.load_pixels(encoder, images))

    async def embed_pixels(self, encoder: PEEncoder, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """Images already through `encoder.transform`, in a micro-batch like any request's."""
        return await self.batcher.images(encoder, pixels)

    async def image_bytes(self, ref: ImageRef) -> bytes:
        """The encoded bytes an image object names (fetched for a URL), off the event loop."""
        return await run_blocking(self.loader.ref_bytes, ref)

    async def embed_texts(self, version_id: str | None, texts: Sequence[str]) -> np.ndarray:
        self._check_count(len(texts), "text")
        self._check_texts(texts)
        encoder = await self.encoder(version_id)
        return await self._texts(encoder, texts)

    async def _texts(self, encoder: PEEncoder, texts: Sequence[str]) -> np.ndarray:
        """Cached texts (search queries repeat) skip the model; the rest share a micro-batch."""
        model = encoder.variant.version_id
        cached = [self.text_cache.get(model, text) for text in texts]
        missing = list(dict.fromkeys(t for t, v in zip(texts, cached, strict=True) if v is None))
        fresh = dict(zip(missing, await self.batcher.texts(encoder, missing), strict=True)) if missing else {}
        for text, vector in fresh.items():
            self.text_cache.put(model, text, vector)
        return np.stack([v if v is not None else fresh[t] for t, v in zip(texts, cached, strict=True)])

    async def _embed_as(self, encoder: PEEncoder, kind: str, items: Sequence[PromptItem], role: str) -> np.ndarray:
        if kind == "text":
            texts = [item for item in items if isinstance(item, str)]
            if len(texts) != len(items):
                raise InvalidInputError(f"{role}_type is 'text' but the {role} holds an image object")
            self._check_texts(texts)
            return await self._texts(encoder, texts)
        return await self.batcher.images(encoder, await self.load_pixels(encoder, items))

    async def compare(
        self, version_id: str | None, subject: PromptItem, subject_type: str, prompt: Any, prompt_type: str
    ) -> list[float] | dict[str, float]:
        prompts = Prompts.parse(prompt)
        self._check_count(len(prompts.items), "prompt")
        self._check_count(len(prompts.items) + 1, "request")
        encoder = await self.encoder(version_id)
        subject_vec = (await self._embed_as(encoder, subject_type, [subject], "subject"))[0]
        prompt_vecs = await self._embed_as(encoder, prompt_type, prompts.items, "prompt")
        return prompts.shape(cosine(prompt_vecs, subject_vec))

    async def classify(
        self, version_id: str | None, subject: PromptItem, subject_type: str, classes: list[str] | dict[str, str]
    ) -> ClassScores:
        prompts = Prompts.parse(classes)
        names = prompts.keys if prompts.keys is not None else [str(p) for p in prompts.items]
        self._check_count(len(names), "prompt")
        self._check_count(len(names) + 1, "request")
        encoder = await self.encoder(version_id)
        subject_vec = (await self._embed_as(encoder, subject_type, [subject], "subject"))[0]
        prompt_vecs = await self._embed_as(encoder, "text", prompts.items, "prompt")
        similarity = cosine(prompt_vecs, subject_vec)
        logit_scale = encoder.logit_scale
        return ClassScores(names, similarity, softmax(logit_scale * similarity), logit_scale)


class TextCache:
    """Least-recently-used text embeddings per model; size 0 turns it off."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._vectors: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, model: str, text: str) -> np.ndarray | None:
        vector = self._vectors.get((model, text))
        if vector is None:
            self.misses += 1
            return None
        self.hits += 1
        self._vectors.move_to_end((model, text))
        return vector

    def put(self, model: str, text: str, vector: np.ndarray) -> None:
        if self.size <= 0:
            return
        self._vectors[(model, text)] = vector
        self._vectors.move_to_end((model, text))
        while len(self._vectors) > self.size:
            self._vectors.popitem(last=False)


def cosine(unit_rows: np.ndarray, unit_vector: np.ndarray) -> np.ndarray:
    """Cosine of unit vectors, clipped: float32 rounding can land a hair outside [-1, 1]."""
    return np.clip(unit_rows @ unit_vector, -1.0, 1.0)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits.astype(np.float64) - logits.max())
    return shifted / shifted.sum()
