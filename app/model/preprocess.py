"""PE's inference preprocessing in NumPy and Pillow, so that the ONNX path never imports torch.

It is the transform open_clip builds for PE (squash resize, bilinear with Pillow's antialiasing,
RGB, [0, 1], mean = std = 0.5), step for step: Pillow does the resize in both, so the pixels are
identical, not merely close (tests compare it with open_clip's own transform).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from app.model.variants import PE_MEAN, PE_STD

_MEAN = np.asarray(PE_MEAN, dtype=np.float32).reshape(3, 1, 1)
_STD = np.asarray(PE_STD, dtype=np.float32).reshape(3, 1, 1)


def pe_pixels(image: Image.Image, size: int) -> np.ndarray:
    """One image as the model's input: float32, (3, size, size), in [-1, 1]."""
    # Resize first, then convert, as open_clip's transform does: the order changes the pixels of
    # palette and RGBA images.
    resized = image.resize((size, size), Image.Resampling.BILINEAR).convert("RGB")
    pixels = np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    return (pixels - _MEAN) / _STD


class PETransform:
    """`pe_pixels` bound to one input size: what decode threads call for each image."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Image.Image) -> np.ndarray:
        return pe_pixels(image, self.size)


def stack(pixels: list[np.ndarray]) -> np.ndarray:
    """A batch for the image tower: contiguous float32 (N, 3, H, W)."""
    return np.ascontiguousarray(np.stack(pixels), dtype=np.float32)


def probe_images(size: int, count: int = 8) -> np.ndarray:
    """Deterministic inputs on which a runtime or precision is compared with torch fp32: smooth
    colour fields with sharp edges and fine texture, in PE's input range."""
    rng = np.random.default_rng(0)
    images = []
    for index in range(count):
        seed = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
        coarse = seed.resize((size, size), Image.Resampling.BICUBIC)
        field = np.asarray(coarse, dtype=np.float32)
        # Edges: a bright band whose position varies; texture: fine noise of varying strength.
        band = slice(size * index // (2 * count), size * index // (2 * count) + size // 6)
        field[band] = 255 - field[band]
        field += rng.normal(0, 4 + 4 * index, field.shape).astype(np.float32)
        images.append(Image.fromarray(np.clip(field, 0, 255).astype(np.uint8)))
    return stack([pe_pixels(image, size) for image in images])
