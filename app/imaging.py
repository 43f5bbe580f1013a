"""Bytes to an RGB PIL image, the way every input path decodes them."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from app.errors import ImageLoadError

# Modes whose samples exceed 8 bits: PIL's convert("RGB") would clip them, not scale them.
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def decode_image(data: bytes) -> Image.Image:
    """Decode any format Pillow reads into RGB, EXIF orientation applied, first frame only.

    Alpha is dropped, not composited, as Roboflow's server and open_clip's
    `convert("RGB")` do, so embeddings match theirs for the same file.
    """
    if not data:
        raise ImageLoadError("the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image) or image
            return to_rgb(image)
    except ImageLoadError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(_reason(exc)) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        # Truncated or corrupt files surface as any of these from Pillow's plugins.
        raise ImageLoadError(f"the image data is corrupt or truncated ({exc})") from exc


def _reason(exc: Exception) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "the data is not an image in a supported format (JPEG, PNG, WebP, BMP, GIF, TIFF)"
    return f"the image is too large to decode safely ({exc})"


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
        low, high = float(array.min()), float(array.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        array = (array - low) * scale
    else:
        array = array / 257.0
    gray = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")
