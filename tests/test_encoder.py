"""The encoder on the real PE-Core architecture (random weights): shapes, norms, batching."""

from __future__ import annotations

import numpy as np
import pytest

from app.model.encoder import PEEncoder
from app.model.precision import cpu_has_native_bf16
from tests.support.constants import TEST_MODEL
from tests.support.images import photo

TEXTS = ["a photo of a cat", "a dog on a beach", "", "A PHOTO OF A CAT", "x" * 500]


def test_image_embeddings_are_unit_float32(encoder: PEEncoder) -> None:
    vectors = encoder.embed_images([photo(320, 240, seed=s) for s in range(3)])
    assert vectors.shape == (3, 512) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])


def test_text_embeddings_are_unit_float32(encoder: PEEncoder) -> None:
    vectors = encoder.embed_texts(TEXTS)
    assert vectors.shape == (len(TEXTS), 512) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_tokenizer_lower_cases_and_truncates(encoder: PEEncoder) -> None:
    vectors = encoder.embed_texts(TEXTS)
    np.testing.assert_allclose(vectors[0], vectors[3], atol=1e-6)
    tokens = encoder.tokenizer(["word " * 100])
    assert tokens.shape == (1, 32)


def test_deterministic(encoder: PEEncoder) -> None:
    image = photo(200, 200, seed=5)
    np.testing.assert_array_equal(encoder.embed_images([image]), encoder.embed_images([image]))
    np.testing.assert_array_equal(encoder.embed_texts(["a cat"]), encoder.embed_texts(["a cat"]))


def test_random_weights_are_the_same_in_every_process(encoder: PEEncoder) -> None:
    """Random mode is seeded, so a test server and the test process agree."""
    other = PEEncoder(encoder.variant, weights="random", device="cpu").load()
    np.testing.assert_allclose(other.embed_texts(["a cat"]), encoder.embed_texts(["a cat"]), atol=1e-6)


def test_batch_equals_one_by_one_across_chunks(encoder: PEEncoder) -> None:
    images = [photo(160 + 20 * s, 120, seed=s) for s in range(11)]  # > inference_batch (8): two chunks
    batched = encoder.embed_images(images)
    single = np.concatenate([encoder.embed_images([image]) for image in images])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    texts = [f"photo number {i}" for i in range(11)]
    np.testing.assert_allclose(
        encoder.embed_texts(texts), np.concatenate([encoder.embed_texts([t]) for t in texts]), atol=1e-5
    )


def test_empty_input_gives_empty_matrix(encoder: PEEncoder) -> None:
    assert encoder.embed_texts([]).shape == (0, 512)


def test_info_reports_model_device_precision_and_random_weights(encoder: PEEncoder) -> None:
    info = encoder.info
    assert (info.model, info.dim, info.device) == (TEST_MODEL, 512, "cpu")
    # `auto` takes bf16 for the image tower on a CPU with native bf16 (its guard holds on these weights).
    assert (info.image_precision, info.text_precision) == ("bf16" if cpu_has_native_bf16() else "fp32", "fp32")
    assert info.weights == "random" and info.random_weights


def test_embedding_before_load_is_an_error() -> None:
    from app.model.variants import get_variant

    with pytest.raises(RuntimeError, match="not loaded"):
        PEEncoder(get_variant(TEST_MODEL), weights="random", device="cpu").embed_texts(["x"])
