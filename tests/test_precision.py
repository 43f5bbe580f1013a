"""Reduced-precision modes: chosen per tower, guarded by their measured cosine to fp32."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from app.model import precision
from app.model.encoder import PEEncoder
from app.model.preprocess import probe_images
from app.model.probes import PROBE_TEXTS
from app.model.variants import get_variant
from app.settings import Settings
from tests.support.constants import TEST_MODEL
from tests.support.images import photo

VARIANT = get_variant(TEST_MODEL)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def int8_encoder() -> PEEncoder:
    return PEEncoder(
        VARIANT, weights="random", device="cpu", runtime="torch", image_precision="int8", text_precision="int8"
    ).load()


@pytest.fixture(scope="module")
def fp32_encoder() -> PEEncoder:
    """The reference: fp32 in both towers, where the session encoder's `auto` may pick bf16 for images."""
    return PEEncoder(
        VARIANT, weights="random", device="cpu", runtime="torch", image_precision="fp32", text_precision="fp32"
    ).load()


def test_torch_int8_reports_its_true_cosine_to_fp32_per_tower(int8_encoder: PEEncoder, fp32_encoder: PEEncoder) -> None:
    probe = list(probe_images(VARIANT.image_size))
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
    module = int8_encoder.tower("image").module  # type: ignore[attr-defined]
    quantised = [m for m in module.modules() if "quantized" in type(m).__module__]
    assert quantised, "no layer of the image tower was quantised"
    images = [photo(300, 200, seed=s) for s in range(3)]
    vectors = int8_encoder.embed_images(images)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Close to fp32, and each image still nearest to its own fp32 embedding.
    similarity = vectors @ fp32_encoder.embed_images(images).T
    assert (similarity.argmax(axis=1) == np.arange(3)).all()


def test_auto_stays_fp32_without_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    for runtime in ("auto", "torch"):
        encoder = PEEncoder(VARIANT, weights="random", device="cpu", runtime=runtime).load()
        assert {k: m.precision for k, m in encoder.modes.items()} == {"image": "fp32", "text": "fp32"}
        assert encoder.runtimes == (
            {"image": "onnx", "text": "onnx"} if runtime == "auto" else dict.fromkeys(["image", "text"], "torch")
        )


def test_auto_takes_bf16_for_images_on_native_bf16_when_within_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    encoder = PEEncoder(VARIANT, weights="random", device="cpu", runtime="torch").load()
    image = encoder.modes["image"]
    assert image.precision == "bf16" and image.cosine is not None and image.cosine >= precision.COSINE_GUARD
    # bf16 has been measured slower for short text passes, so text stays fp32 under auto.
    assert encoder.modes["text"].precision == "fp32"
    vectors = encoder.embed_images([photo(seed=1)])
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_auto_refuses_a_mode_under_the_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    reference = np.eye(4)
    drifted = reference + 0.05 * np.ones((4, 4))  # cosine 0.9966 per row: under 0.999
    embed = {"fp32": reference, "bf16": drifted}.__getitem__
    refused = precision.choose("auto", kind="image", candidates=["bf16"], embed=embed)
    assert refused == precision.TowerMode("fp32")
    close = reference + 0.01 * np.ones((4, 4))
    chosen = precision.choose(
        "auto", kind="image", candidates=["bf16"], embed={"fp32": reference, "bf16": close}.__getitem__
    )
    assert chosen.precision == "bf16" and chosen.cosine >= precision.COSINE_GUARD


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_precision": "fp16"}, "fp16 is for CUDA"),
        ({"text_precision": "int4"}, "unknown text precision"),
        ({"runtime": "onnx", "image_precision": "bf16"}, "no bf16"),
        ({"runtime": "tensorrt"}, "unknown runtime"),
    ],
)
def test_impossible_modes_are_refused_before_loading(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PEEncoder(VARIANT, weights="random", device="cpu", **kwargs)


def test_settings_reject_unknown_precision() -> None:
    with pytest.raises(ValueError, match="image_precision"):
        Settings(image_precision="int4")


@pytest.mark.slow
def test_compiled_towers_embed_like_eager_ones(torch_encoder: PEEncoder) -> None:
    # The "eager" backend runs the compile path (tracing, warm-up at load) without paying for codegen.
    compiled = PEEncoder(
        VARIANT, weights="random", device="cpu", runtime="torch", compile=True, compile_backend="eager"
    ).load()
    images = [photo(240, 180, seed=s) for s in range(2)]
    np.testing.assert_allclose(compiled.embed_images(images), torch_encoder.embed_images(images), atol=1e-5)
    np.testing.assert_allclose(
        compiled.embed_texts(["a cat", "two dogs"]), torch_encoder.embed_texts(["a cat", "two dogs"]), atol=1e-5
    )


def test_forward_batch_defaults_to_the_cpu_size_and_follows_the_setting() -> None:
    from app.model.encoder import DEFAULT_BATCH

    assert PEEncoder(VARIANT, weights="random", device="cpu").batch_size == DEFAULT_BATCH["cpu"] == 32
    assert PEEncoder(VARIANT, weights="random", device="cpu", batch_size=5).batch_size == 5


@pytest.fixture(scope="module")
def onnx_int8_encoder() -> PEEncoder:
    """Static int8 on ONNX Runtime, quantised from the session's cached export on first use."""
    return PEEncoder(
        VARIANT, weights="random", device="cpu", runtime="onnx", image_precision="int8", text_precision="int8"
    ).load()


def test_static_int8_embeds_an_item_the_same_whatever_shares_its_batch(onnx_int8_encoder: PEEncoder) -> None:
    """Calibrated scales, unlike dynamic int8's per-batch ones: a request's vector never depends on its company."""
    images = [photo(300, 200, seed=s) for s in range(5)]
    alone = onnx_int8_encoder.embed_images(images[:1])
    np.testing.assert_array_equal(onnx_int8_encoder.embed_images(images)[:1], alone)
    np.testing.assert_array_equal(onnx_int8_encoder.embed_images([images[0], *reversed(images[1:])])[:1], alone)
    texts = ["a cat", "a very long caption about a crowded market at night with lanterns", "ok"]
    single = onnx_int8_encoder.embed_texts(texts[:1])
    np.testing.assert_array_equal(onnx_int8_encoder.embed_texts(texts)[:1], single)


def test_static_int8_reports_its_cosine_to_fp32_and_stays_close(
    onnx_int8_encoder: PEEncoder, torch_encoder: PEEncoder
) -> None:
    modes = onnx_int8_encoder.modes
    assert onnx_int8_encoder.runtimes == {"image": "onnx", "text": "onnx"}
    assert (modes["image"].precision, modes["text"].precision) == ("int8", "int8")
    probe = list(probe_images(VARIANT.image_size))
    fp32 = PEEncoder(VARIANT, weights="random", device="cpu", runtime="torch", image_precision="fp32").load(["image"])
    measured = _cosines(onnx_int8_encoder.embed_pixels(probe), fp32.embed_pixels(probe)).min()
    assert modes["image"].cosine == pytest.approx(measured, abs=1e-4)
    texts = list(PROBE_TEXTS)
    text_cos = _cosines(onnx_int8_encoder.embed_texts(texts), torch_encoder.embed_texts(texts)).min()
    assert modes["text"].cosine == pytest.approx(text_cos, abs=1e-4)
    # Near fp32 on these weights, and each image still nearest its own fp32 embedding.
    assert modes["image"].cosine > 0.97 and modes["text"].cosine > 0.99
    images = [photo(300, 200, seed=s) for s in range(4)]
    similarity = onnx_int8_encoder.embed_images(images) @ fp32.embed_images(images).T
    assert (similarity.argmax(axis=1) == np.arange(4)).all()


def test_static_int8_is_quantised_once_then_loaded_from_the_cache(
    onnx_int8_encoder: PEEncoder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.model")
    again = PEEncoder(
        VARIANT, weights="random", device="cpu", runtime="onnx", image_precision="int8", text_precision="int8"
    ).load()
    assert "Quantised" not in caplog.text
    assert again.modes == onnx_int8_encoder.modes
    image = [photo(250, 250, seed=9)]
    np.testing.assert_array_equal(again.embed_images(image), onnx_int8_encoder.embed_images(image))
