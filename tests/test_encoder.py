"""The encoder on the real PE-Core architecture (random weights), on each runtime: shapes, norms, batching."""

from __future__ import annotations

import numpy as np

from app.model.encoder import PEEncoder
from app.model.variants import get_variant
from tests.support.constants import TEST_MODEL
from tests.support.images import photo
from tests.support.runtimes import expected_auto, parity_floor

TEXTS = ["a photo of a cat", "a dog on a beach", "", "A PHOTO OF A CAT", "x" * 500]


def test_image_embeddings_are_unit_float32(any_encoder: PEEncoder) -> None:
    vectors = any_encoder.embed_images([photo(320, 240, seed=s) for s in range(3)])
    assert vectors.shape == (3, 512) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])


def test_text_embeddings_are_unit_float32(any_encoder: PEEncoder) -> None:
    vectors = any_encoder.embed_texts(TEXTS)
    assert vectors.shape == (len(TEXTS), 512) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_tokenizer_lower_cases_and_truncates(any_encoder: PEEncoder) -> None:
    vectors = any_encoder.embed_texts(TEXTS)
    np.testing.assert_allclose(vectors[0], vectors[3], atol=1e-6)
    tokens = any_encoder.tokenizer(["word " * 100])
    assert tokens.shape == (1, 32)


def test_deterministic(any_encoder: PEEncoder) -> None:
    image = photo(200, 200, seed=5)
    np.testing.assert_array_equal(any_encoder.embed_images([image]), any_encoder.embed_images([image]))
    np.testing.assert_array_equal(any_encoder.embed_texts(["a cat"]), any_encoder.embed_texts(["a cat"]))


def test_runtimes_agree_with_torch(encoder: PEEncoder, torch_encoder: PEEncoder) -> None:
    """The default runtime embeds as torch does: fp32 exports at parity, bf16 within its guard."""
    images = [photo(300, 220, seed=s) for s in range(4)]
    texts = ["a photo of a cat", "two dogs playing in the snow", "a red car"]
    image_cos = np.sum(encoder.embed_images(images) * torch_encoder.embed_images(images), axis=1)
    text_cos = np.sum(encoder.embed_texts(texts) * torch_encoder.embed_texts(texts), axis=1)
    # The torch encoder runs its own auto (bf16 images where native): two bf16 runs differ a bit more.
    assert text_cos.min() > parity_floor("text")
    assert image_cos.min() > (0.998 if parity_floor("image") < 0.99999 else 0.99999)


def test_random_weights_are_the_same_in_every_process(any_encoder: PEEncoder) -> None:
    """Random mode is seeded, so a test server and the test process agree."""
    other = PEEncoder(any_encoder.variant, weights="random", device="cpu", runtime=any_encoder.loader.options.runtime)
    np.testing.assert_array_equal(other.embed_texts(["a cat"]), any_encoder.embed_texts(["a cat"]))


def test_batch_equals_one_by_one_across_chunks(any_encoder: PEEncoder) -> None:
    images = [photo(160 + 20 * s, 120, seed=s) for s in range(11)]  # > inference_batch (8): two chunks
    batched = any_encoder.embed_images(images)
    single = np.concatenate([any_encoder.embed_images([image]) for image in images])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    texts = [f"photo number {i}" for i in range(11)]
    np.testing.assert_allclose(
        any_encoder.embed_texts(texts), np.concatenate([any_encoder.embed_texts([t]) for t in texts]), atol=1e-5
    )


def test_empty_input_gives_empty_matrix(any_encoder: PEEncoder) -> None:
    assert any_encoder.embed_texts([]).shape == (0, 512)


def test_info_reports_model_device_runtime_and_precision_per_tower(encoder: PEEncoder) -> None:
    info = encoder.info
    assert (info.model, info.dim, info.device) == (TEST_MODEL, 512, "cpu")
    expected = expected_auto()
    assert (info.image_precision, info.text_precision) == (expected["image"][1], expected["text"][1])
    for kind, (runtime, precision) in expected.items():
        assert (info.towers[kind]["runtime"], info.towers[kind]["precision"]) == (runtime, precision)
        assert info.towers[kind]["cosine_to_fp32"] >= parity_floor(kind)
    assert info.weights == "random" and info.random_weights


def test_an_unloaded_encoder_loads_only_the_tower_it_needs(encoder: PEEncoder) -> None:
    """A text search in the CLI never pays for the image tower (nor an ingest for the text one)."""
    fresh = PEEncoder(get_variant(TEST_MODEL), weights="random", device="cpu")
    assert not fresh.loaded
    np.testing.assert_array_equal(fresh.embed_texts(["a cat"]), encoder.embed_texts(["a cat"]))
    assert set(fresh.modes) == {"text"}
