"""The Roboflow-compatible perception_encoder routes, plus zero-shot classification."""

from __future__ import annotations

import time

from fastapi import APIRouter

from app.api.auth import ReadAccess
from app.api.deps import EmbedderDep
from app.api.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    ClassPrediction,
    CompareRequest,
    CompareResponse,
    EmbeddingResponse,
    EmbedImageRequest,
    EmbedTextRequest,
    ErrorResponse,
    to_refs,
)

router = APIRouter(
    prefix="/perception_encoder",
    tags=["perception_encoder"],
    dependencies=[ReadAccess],
    responses={
        400: {"model": ErrorResponse, "description": "An image could not be loaded, or the input is unusable"},
        413: {"model": ErrorResponse, "description": "More items than PE_SEARCH_MAX_BATCH"},
        500: {"model": ErrorResponse, "description": "Internal error"},
    },
)


def _list(value: object) -> list:
    return value if isinstance(value, list) else [value]


@router.post("/embed_image", response_model=EmbeddingResponse, summary="Embed one image or a list of images")
async def embed_image(body: EmbedImageRequest, embedder: EmbedderDep) -> EmbeddingResponse:
    started = time.perf_counter()
    vectors = await embedder.embed_images(body.perception_encoder_version_id, to_refs(_list(body.image)))
    return EmbeddingResponse(time=time.perf_counter() - started, embeddings=vectors.tolist())


@router.post("/embed_text", response_model=EmbeddingResponse, summary="Embed one text or a list of texts")
async def embed_text(body: EmbedTextRequest, embedder: EmbedderDep) -> EmbeddingResponse:
    started = time.perf_counter()
    vectors = await embedder.embed_texts(body.perception_encoder_version_id, _list(body.text))
    return EmbeddingResponse(time=time.perf_counter() - started, embeddings=vectors.tolist())


@router.post(
    "/compare",
    response_model=CompareResponse,
    summary="Cosine similarity of a subject to one, a list, or a dict of prompts",
)
async def compare(body: CompareRequest, embedder: EmbedderDep) -> CompareResponse:
    started = time.perf_counter()
    similarity = await embedder.compare(
        body.perception_encoder_version_id,
        to_refs(body.subject),
        body.subject_type,
        to_refs(body.prompt),
        body.prompt_type,
    )
    return CompareResponse(time=time.perf_counter() - started, similarity=similarity)


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    summary="Zero-shot classification: class probabilities, softmax over logit_scale x cosine",
)
async def classify(body: ClassifyRequest, embedder: EmbedderDep) -> ClassifyResponse:
    started = time.perf_counter()
    scores = await embedder.classify(
        body.perception_encoder_version_id, to_refs(body.subject), body.subject_type, body.prompt
    )
    ranked = sorted(range(len(scores.names)), key=lambda i: -scores.probability[i])
    predictions = [
        ClassPrediction(
            class_name=scores.names[i],
            class_id=i,
            confidence=float(scores.probability[i]),
            similarity=float(scores.similarity[i]),
        )
        for i in ranked
    ]
    return ClassifyResponse(
        time=time.perf_counter() - started,
        predictions=predictions,
        top=predictions[0].class_name,
        confidence=predictions[0].confidence,
        logit_scale=scores.logit_scale,
    )
