"""Reduced-precision modes: chosen per tower, guarded by their measured cosine to fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.model import precision
from app.model.encoder import PROBE_TEXTS, PEEncoder, probe_pixels
from app.model.variants import get_variant
from app.settings import Settings
from tests.support.constants import TEST_MODEL
from tests.support.images import photo

VARIANT = get_variant(TEST_MODEL)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def int8_encoder() -> PEEncoder:
    return PEEncoder(VARIANT, weights="random", device="cpu", image_precision="int8", text_precision="int8").load()


@pytest.fixture(scope="module")
def fp32_encoder() -> PEEncoder:
    """The reference: fp32 in both towers, where the session encoder's `auto` may pick bf16 for images."""
    return PEEncoder(VARIANT, weights="random", device="cpu", image_precision="fp32", text_precision="fp32").load()


def test_int8_reports_its_true_cosine_to_fp32_per_tower(int8_encoder: PEEncoder, fp32_encoder: PEEncoder) -> None:
    probe = list(probe_pixels(VARIANT.image_size))
    image_cos = _cosines(int8_encoder.embed_pixels(probe), fp32_encoder.embed_pixels(probe)).min()
    texts = list(PROBE_TEXTS)
    text_cos = _cosines(int8_encoder.embed_texts(texts), fp32_encoder.embed_texts(texts)).min()
    modes = int8_encoder.modes
    assert (modes["image"].precision, modes["text"].precision) == ("int8", "int8")
    assert modes["image"].cosine == pytest.approx(image_cos, abs=1e-4)
    assert modes["text"].cosine == pytest.approx(text_cos, abs=1e-4)
    info = int8_encoder.info
    assert (info.image_precision, info.text_precision) == ("int8", "int8")


def test_int8_quantises_linear_layers_and_still_embeds_real_images(
    int8_encoder: PEEncoder, fp32_encoder: PEEncoder
) -> None:
    quantised = [m for m in int8_encoder._require_model().visual.modules() if "quantized" in type(m).__module__]
    assert quantised, "no layer of the image tower was quantised"
    images = [photo(300, 200, seed=s) for s in range(3)]
    vectors = int8_encoder.embed_images(images)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Close to fp32, and each image still nearest to its own fp32 embedding.
    similarity = vectors @ fp32_encoder.embed_images(images).T
    assert (similarity.argmax(axis=1) == np.arange(3)).all()


def test_auto_stays_fp32_without_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    encoder = PEEncoder(VARIANT, weights="random", device="cpu").load()
    assert {k: m.precision for k, m in encoder.modes.items()} == {"image": "fp32", "text": "fp32"}


def test_auto_takes_bf16_for_images_on_native_bf16_when_within_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    encoder = PEEncoder(VARIANT, weights="random", device="cpu").load()
    image = encoder.modes["image"]
    assert image.precision == "bf16" and image.cosine is not None and image.cosine >= precision.COSINE_GUARD
    # bf16 has been measured slower for short text passes, so text stays fp32 under auto.
    assert encoder.modes["text"].precision == "fp32"
    vectors = encoder.embed_images([photo(seed=1)])
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_auto_refuses_a_mode_under_the_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    reference = torch.eye(4)
    drifted = reference + 0.05 * torch.ones(4, 4)  # cosine 0.9966 per row: under 0.999
    embed = {"fp32": reference, "bf16": drifted}.__getitem__
    refused = precision.choose("auto", kind="image", device=torch.device("cpu"), embed=embed)
    assert refused == precision.TowerMode("fp32")
    close = reference + 0.01 * torch.ones(4, 4)
    chosen = precision.choose(
        "auto", kind="image", device=torch.device("cpu"), embed={"fp32": reference, "bf16": close}.__getitem__
    )
    assert chosen.precision == "bf16" and chosen.cosine >= precision.COSINE_GUARD


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_precision": "fp16"}, "fp16 is for CUDA"),
        ({"text_precision": "int4"}, "unknown text precision"),
    ],
)
def test_impossible_modes_are_refused_before_loading(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PEEncoder(VARIANT, weights="random", device="cpu", **kwargs)


def test_settings_reject_unknown_precision() -> None:
    with pytest.raises(ValueError, match="image_precision"):
        Settings(image_precision="int4")


@pytest.mark.slow
def test_compiled_towers_embed_like_eager_ones(encoder: PEEncoder) -> None:
    # The "eager" backend runs the compile path (tracing, warm-up at load) without paying for codegen.
    compiled = PEEncoder(VARIANT, weights="random", device="cpu", compile=True, compile_backend="eager").load()
    images = [photo(240, 180, seed=s) for s in range(2)]
    np.testing.assert_allclose(compiled.embed_images(images), encoder.embed_images(images), atol=1e-5)
    np.testing.assert_allclose(
        compiled.embed_texts(["a cat", "two dogs"]), encoder.embed_texts(["a cat", "two dogs"]), atol=1e-5
    )


def test_forward_batch_defaults_to_the_cpu_size_and_follows_the_setting() -> None:
    from app.model.encoder import DEFAULT_BATCH

    assert PEEncoder(VARIANT, weights="random", device="cpu").batch_size == DEFAULT_BATCH["cpu"] == 32
    assert PEEncoder(VARIANT, weights="random", device="cpu", batch_size=5).batch_size == 5
