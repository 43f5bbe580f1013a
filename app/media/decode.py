"""Bytes to an RGB PIL image, the way every input path decodes them."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from app.errors import ImageLoadError

# Modes whose samples exceed 8 bits: PIL's convert("RGB") would clip them, not scale them.
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}

_ORIENTATION_TAG = 0x0112
# EXIF Orientation value -> the transpose that displays the stored pixels upright.
_ORIENTATION_FIX = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


_SWAPS_AXES = {5, 6, 7, 8}


@dataclass(frozen=True)
class Decoded:
    """A decoded image, and the upright size of the full image (larger when decoded at reduced scale)."""

    image: Image.Image
    width: int
    height: int


def decode_image(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """Decode any format Pillow reads into RGB, EXIF orientation applied, first frame only.

    Alpha is dropped, not composited, as Roboflow's server and open_clip's
    `convert("RGB")` do, so embeddings match theirs for the same file. Images over
    `max_pixels` (default: Pillow's MAX_IMAGE_PIXELS) are refused before decoding.
    """
    return decode_reduced(data, max_pixels, min_side=None).image


def decode_reduced(data: bytes, max_pixels: int | None = None, *, min_side: int | None) -> Decoded:
    """Like decode_image, but a JPEG much larger than `min_side` is decoded at 1/2, 1/4 or 1/8
    scale in libjpeg's DCT (draft mode), each side staying >= min_side: several times faster for
    photos far larger than the model's input, at a small, measured cost in embedding cosine."""
    if not data:
        raise ImageLoadError("the image is empty (0 bytes)")
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        image = Image.open(io.BytesIO(data))
        # Checked here rather than through Pillow's warning, whose filter is process-wide
        # state that concurrent decoding threads would race on.
        if limit and image.width * image.height > limit:
            raise ImageLoadError(
                f"the image is too large to decode safely ({image.width}x{image.height} pixels, limit {limit})"
            )
        image.seek(0)
        width, height = image.size
        if min_side and image.format == "JPEG":
            image.draft("RGB", (min_side, min_side))
        image.load()
        # Read after load: some formats (TIFF) only have their tags then.
        orientation = image.getexif().get(_ORIENTATION_TAG, 1)
        orientation = orientation if isinstance(orientation, int) else 1
        if orientation in _SWAPS_AXES:
            width, height = height, width
        return Decoded(to_rgb(_upright(image, orientation)), width, height)
    except ImageLoadError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise ImageLoadError(_reason(exc)) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        # Truncated or corrupt files surface as any of these from Pillow's plugins.
        raise ImageLoadError(f"the image data is corrupt or truncated ({exc})") from exc


def _reason(exc: Exception) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "the data is not an image in a supported format (JPEG, PNG, WebP, BMP, GIF, TIFF)"
    return f"the image is too large to decode safely ({exc})"


def _upright(image: Image.Image, orientation: int) -> Image.Image:
    """Apply the EXIF orientation.

    Not `ImageOps.exif_transpose`: it also re-serialises the EXIF block for the output and
    raises struct.error on tags it cannot write back, failing an image that decoded fine.
    """
    method = _ORIENTATION_FIX.get(orientation)
    return image.transpose(method) if method is not None else image


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in _WIDE_MODES:
        return _wide_to_rgb(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def _wide_to_rgb(image: Image.Image) -> Image.Image:
    """Scale 16-bit and float grayscale to 8 bits instead of saturating at 255."""
    array = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        finite = np.isfinite(array)
        low, high = (float(array[finite].min()), float(array[finite].max())) if finite.any() else (0.0, 0.0)
        array = np.where(finite, array, low)
        scale = 255.0 / (high - low) if high > low else 0.0
        array = (array - low) * scale
    else:
        array = array / 257.0
    gray = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def image_format(data: bytes) -> str | None:
    """The container format (JPEG, PNG...) from the header alone; None when unknown."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.format
    except Exception:  # noqa: BLE001 - informational only; decoding reports real errors
        return None
