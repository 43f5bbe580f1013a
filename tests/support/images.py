"""Real image files for tests, made with Pillow: structured content, not flat colour."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def photo(width: int = 320, height: int = 240, seed: int = 0) -> Image.Image:
    """An RGB image with gradients, blocks and noise, so resizing and rotation change its pixels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    r = (x * 255 // max(width - 1, 1)).astype(np.uint8)
    g = (y * 255 // max(height - 1, 1)).astype(np.uint8)
    b = (((x // 16 + y // 16) % 2) * 200 + 20).astype(np.uint8)
    pixels = np.stack([r, g, b], axis=-1)
    for _ in range(6):
        x0, y0 = rng.integers(0, width - 8), rng.integers(0, height - 8)
        pixels[y0 : y0 + height // 5, x0 : x0 + width // 6] = rng.integers(0, 256, 3)
    noise = rng.integers(-12, 13, pixels.shape)
    return Image.fromarray(np.clip(pixels.astype(int) + noise, 0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str = "JPEG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def image_object(data: bytes) -> dict:
    return {"type": "base64", "value": b64(data)}
