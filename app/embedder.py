"""What the embedding routes do: validate counts, load images, run the model, score."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from app.api.schemas import ImageObject
from app.encoder import PEEncoder
from app.errors import InvalidInputError, PayloadTooLargeError, TooManyItemsError
from app.image_input import ImageLoader
from app.inference import InferenceRunner, run_blocking
from app.registry import ModelRegistry

PromptItem = ImageObject | str


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

    def shape(self, scores: Sequence[float]) -> list[float] | dict[str, float]:
        values = [float(s) for s in scores]
        return dict(zip(self.keys, values)) if self.keys is not None else values


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
        runner: InferenceRunner,
        *,
        max_items: int,
        max_text_chars: int = 10_000,
    ) -> None:
        self.registry = registry
        self.loader = loader
        self.runner = runner
        self.max_items = max_items
        self.max_text_chars = max_text_chars

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
        return await run_blocking(self.registry.get, version_id)

    async def _load_images(self, items: Sequence[PromptItem]) -> list[Image.Image]:
        def load(item: PromptItem) -> Image.Image:
            if isinstance(item, ImageObject):
                return self.loader.load(item.type, item.value)
            return self.loader.load_bare(item)

        return list(await asyncio.gather(*(run_blocking(load, item) for item in items)))

    async def embed_images(self, version_id: str | None, images: Sequence[ImageObject]) -> np.ndarray:
        self._check_count(len(images), "image")
        encoder = await self.encoder(version_id)
        pixels = await self._load_images(images)
        return await self.runner.run(encoder.embed_images, pixels)

    async def embed_texts(self, version_id: str | None, texts: Sequence[str]) -> np.ndarray:
        self._check_count(len(texts), "text")
        self._check_texts(texts)
        encoder = await self.encoder(version_id)
        return await self.runner.run(encoder.embed_texts, list(texts))

    async def _embed_as(self, encoder: PEEncoder, kind: str, items: Sequence[PromptItem], role: str) -> np.ndarray:
        if kind == "text":
            if not all(isinstance(item, str) for item in items):
                raise InvalidInputError(f"{role}_type is 'text' but the {role} holds an image object")
            self._check_texts(items)
            return await self.runner.run(encoder.embed_texts, list(items))
        return await self.runner.run(encoder.embed_images, await self._load_images(items))

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


def cosine(unit_rows: np.ndarray, unit_vector: np.ndarray) -> np.ndarray:
    """Cosine of unit vectors, clipped: float32 rounding can land a hair outside [-1, 1]."""
    return np.clip(unit_rows @ unit_vector, -1.0, 1.0)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits.astype(np.float64) - logits.max())
    return shifted / shifted.sum()
