"""PE's preprocessing, torch-free, checked against open_clip's own transform and an independent computation."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from app.model.encoder import PEEncoder
from app.model.preprocess import pe_pixels
from app.model.variants import get_variant
from tests.support.images import photo


def reference_pe_transform(image: Image.Image, size: int) -> torch.Tensor:
    """Squash to size x size, bilinear with antialias, [0, 1], then (x - 0.5) / 0.5; done in torch."""
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)[None]
    resized = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return ((resized / 255.0 - 0.5) / 0.5)[0]


@pytest.mark.parametrize("width,height", [(640, 480), (300, 900), (100, 60)])
def test_transform_matches_independent_computation(width: int, height: int) -> None:
    image = photo(width, height, seed=width)
    ours = torch.from_numpy(pe_pixels(image, 384))
    reference = reference_pe_transform(image, 384)
    assert ours.shape == (3, 384, 384)
    difference = (ours - reference).abs()
    # PIL resizes in uint8, torch in float: they differ by rounding, about one grey level.
    assert difference.mean() < 0.01
    assert difference.max() < 0.05


def test_open_clip_fallback_would_differ_so_the_parity_test_can_fail() -> None:
    """Without PE's values open_clip silently uses CLIP's mean/std and a centre crop."""
    image = photo(640, 480, seed=1)
    _, _, clip_default = open_clip.create_model_and_transforms("PE-Core-T-16-384", pretrained=None)
    assert (clip_default(image) - reference_pe_transform(image, 384)).abs().mean() > 0.1


def open_clip_pe_transform(size: int) -> object:
    return open_clip.image_transform(
        size, is_train=False, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear", resize_mode="squash"
    )


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "L", "LA", "CMYK", "I;16"])
def test_numpy_transform_is_open_clips_bit_for_bit(mode: str) -> None:
    """The ONNX path's preprocessing (no torch) gives exactly the pixels open_clip's transform gives."""
    rgb = np.asarray(photo(500, 300, seed=3))
    image = (
        Image.fromarray(rgb[..., 0].astype(np.uint16) * 200).convert(mode)
        if mode == "I;16"
        else Image.fromarray(rgb).convert(mode)
    )
    expected = open_clip_pe_transform(384)(image).numpy()  # type: ignore[operator]
    assert np.array_equal(pe_pixels(image, 384), expected)


@pytest.mark.parametrize("weights", ["random", "/nonexistent/checkpoint.pt", "hub"])
def test_every_weights_source_gets_pe_transform(weights: str) -> None:
    image = photo(500, 200, seed=2)
    encoder = PEEncoder(get_variant("PE-Core-T16-384"), weights=weights, device="cpu")
    assert np.array_equal(encoder.transform(image), pe_pixels(image, 384))
    assert (torch.from_numpy(encoder.transform(image)) - reference_pe_transform(image, 384)).abs().mean() < 0.01
