"""Decoding real image files (app.media.decode) and the spec's image objects (app.media.image_ref).

Every image here is a real file of a real format, made in memory with Pillow; no model is loaded.
"""

from __future__ import annotations

import base64
import io
import random
import struct
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from app.errors import ImageLoadError
from app.media.decode import decode_image
from app.media.fetch import UrlFetcher, UrlPolicy
from app.media.image_ref import ImageLoader, decode_base64
from tests.support.images import b64, encode, photo

RED, GREEN, BLUE, GREY = (255, 0, 0), (0, 255, 0), (0, 0, 255), (128, 128, 128)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def assert_rgb(image: Image.Image, size: tuple[int, int]) -> None:
    assert image.mode == "RGB"
    assert image.size == size


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def raw_png(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes = b"") -> bytes:
    """A PNG written byte by byte, for what Pillow cannot save (16-bit RGB) or must not (bombs)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (32, 24)) -> Image.Image:
    return Image.new("RGB", size, colour)


@pytest.fixture(scope="module")
def source() -> Image.Image:
    return photo(64, 48, seed=3)


@pytest.fixture()
def loader() -> ImageLoader:
    return ImageLoader(UrlFetcher(UrlPolicy()))


# --- Formats ---------------------------------------------------------------------------------

LOSSLESS = {
    "png": ("PNG", {}),
    "bmp": ("BMP", {}),
    "tiff": ("TIFF", {}),
    "tiff-lzw": ("TIFF", {"compression": "tiff_lzw"}),
    "tiff-deflate": ("TIFF", {"compression": "tiff_deflate"}),
    "webp-lossless": ("WEBP", {"lossless": True}),
}


@pytest.mark.parametrize("fmt,params", LOSSLESS.values(), ids=LOSSLESS.keys())
def test_lossless_rgb_formats_decode_to_the_exact_pixels(source: Image.Image, fmt: str, params: dict) -> None:
    image = decode_image(encode(source, fmt, **params))
    assert_rgb(image, source.size)
    assert np.array_equal(pixels(image), pixels(source))


# Tolerances: the noisy test photo loses ~10 levels to 4:2:0 chroma subsampling; another photo
# is ~34 away, so these still tell the right image from a wrong one.
LOSSY = {
    "jpeg": ("JPEG", {"quality": 95}, 12.0),
    "jpeg-progressive": ("JPEG", {"quality": 95, "progressive": True}, 12.0),
    "jpeg-444": ("JPEG", {"quality": 95, "subsampling": 0}, 4.0),
    "webp": ("WEBP", {"quality": 95}, 12.0),
}


@pytest.mark.parametrize("fmt,params,tolerance", LOSSY.values(), ids=LOSSY.keys())
def test_lossy_rgb_formats_decode_close_to_the_source(
    source: Image.Image, fmt: str, params: dict, tolerance: float
) -> None:
    data = encode(source, fmt, **params)
    image = decode_image(data)
    assert_rgb(image, source.size)
    assert mean_abs_diff(image, source) < tolerance
    # Exactly the codec's own pixels: nothing resampled or colour-shifted on the way.
    assert np.array_equal(pixels(image), pixels(Image.open(io.BytesIO(data)).convert("RGB")))


def test_rgba_png_drops_alpha_and_keeps_the_stored_rgb(source: Image.Image) -> None:
    rgba = source.convert("RGBA")
    alpha = np.zeros((source.height, source.width), dtype=np.uint8)
    alpha[:, source.width // 2 :] = 255  # left half fully transparent, right half opaque
    rgba.putalpha(Image.fromarray(alpha))
    image = decode_image(encode(rgba, "PNG"))
    assert_rgb(image, source.size)
    # Not composited on white or black: transparent pixels keep their stored colour.
    assert np.array_equal(pixels(image), pixels(source))


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_fully_transparent_image_keeps_its_stored_colour(fmt: str) -> None:
    stored = Image.new("RGBA", (20, 10), (10, 200, 30, 0))
    params = {"lossless": True, "exact": True} if fmt == "WEBP" else {}
    image = decode_image(encode(stored, fmt, **params))
    assert_rgb(image, (20, 10))
    assert image.getpixel((5, 5)) == (10, 200, 30)


def test_grey_alpha_png_drops_alpha(source: Image.Image) -> None:
    la = source.convert("LA")
    la.putalpha(0)
    image = decode_image(encode(la, "PNG"))
    assert_rgb(image, source.size)
    grey = pixels(source.convert("L"))
    assert np.array_equal(pixels(image), np.stack([grey] * 3, axis=-1))


def palette_image() -> Image.Image:
    """Indices 0..3 in vertical bands, palette red, green, blue, grey."""
    image = Image.new("P", (40, 10))
    image.putpalette([*RED, *GREEN, *BLUE, *GREY] + [0] * (252 * 3))
    image.putdata([x // 10 for _ in range(10) for x in range(40)])
    return image


@pytest.mark.parametrize(
    "fmt,transparency",
    [
        ("PNG", None),
        ("PNG", 1),  # tRNS with one transparent index
        ("PNG", bytes([255, 0, 128, 255])),  # tRNS with per-entry alpha
        ("GIF", None),
        ("GIF", 1),
        ("BMP", None),
        ("TIFF", None),
    ],
    ids=["png", "png-index-transparent", "png-alpha-table", "gif", "gif-transparent", "bmp", "tiff"],
)
def test_palette_images_decode_to_their_palette_colours(fmt: str, transparency: int | bytes | None) -> None:
    params = {} if transparency is None else {"transparency": transparency}
    image = decode_image(encode(palette_image(), fmt, **params))
    assert_rgb(image, (40, 10))
    # Transparent entries keep their palette RGB: alpha is dropped, not composited.
    assert [image.getpixel((x, 5)) for x in (5, 15, 25, 35)] == [RED, GREEN, BLUE, GREY]


@pytest.mark.parametrize("fmt,exact", [("PNG", True), ("BMP", True), ("TIFF", True), ("JPEG", False)])
def test_greyscale_images_decode_to_equal_channels(source: Image.Image, fmt: str, exact: bool) -> None:
    grey = source.convert("L")
    image = decode_image(encode(grey, fmt, quality=95) if fmt == "JPEG" else encode(grey, fmt))
    assert_rgb(image, source.size)
    rgb = pixels(image)
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])
    diff = np.abs(rgb[..., 0] - pixels(grey))
    assert diff.max() == 0 if exact else diff.mean() < 3


@pytest.mark.parametrize(
    "fmt,params",
    [("PNG", {}), ("BMP", {}), ("TIFF", {}), ("TIFF", {"compression": "group4"}), ("GIF", {})],
    ids=["png", "bmp", "tiff", "tiff-group4", "gif"],
)
def test_one_bit_images_decode_to_black_and_white(fmt: str, params: dict) -> None:
    y, x = np.mgrid[0:16, 0:24]
    checker = ((x // 4 + y // 4) % 2).astype(bool)
    bilevel = Image.fromarray(checker).convert("1")
    assert bilevel.mode == "1"
    image = decode_image(encode(bilevel, fmt, **params))
    assert_rgb(image, (24, 16))
    expected = np.where(checker, 255, 0)
    assert np.array_equal(pixels(image), np.stack([expected] * 3, axis=-1))


def test_cmyk_jpeg_decodes_to_the_right_colours(source: Image.Image) -> None:
    cmyk = source.convert("CMYK")
    data = encode(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    image = decode_image(data)
    assert_rgb(image, source.size)
    assert mean_abs_diff(image, source) < 6  # colours, not inverted or channel-swapped


def test_cmyk_jpeg_pure_colours() -> None:
    bands = Image.new("CMYK", (30, 10))
    for i, ink in enumerate([(0, 255, 255, 0), (255, 0, 255, 0), (0, 0, 0, 255)]):  # red, green, black
        bands.paste(ink, (i * 10, 0, i * 10 + 10, 10))
    image = decode_image(encode(bands, "JPEG", quality=100))
    for x, expected in [(5, RED), (15, GREEN), (25, (0, 0, 0))]:
        assert np.abs(np.subtract(image.getpixel((x, 5)), expected)).max() <= 12


def test_cmyk_tiff_decodes_exactly(source: Image.Image) -> None:
    image = decode_image(encode(source.convert("CMYK"), "TIFF"))
    assert_rgb(image, source.size)
    assert np.array_equal(pixels(image), pixels(source))


# --- Samples wider than 8 bits -----------------------------------------------------------------

SIXTEEN_BIT = np.array(
    [
        [0, 257, 32768, 65535, 1000, 12345, 65280, 128],
        [65535, 65535, 0, 0, 40000, 50000, 60000, 20000],
    ],
    dtype=np.uint16,
)


def grey16_png() -> bytes:
    return encode(Image.fromarray(SIXTEEN_BIT), "PNG")


def grey16_tiff(byte_order: str) -> bytes:
    raw = SIXTEEN_BIT.astype(f"{byte_order}u2").tobytes()
    mode = "I;16B" if byte_order == ">" else "I;16"
    return encode(Image.frombytes(mode, (8, 2), raw), "TIFF")


def int32_tiff() -> bytes:
    return encode(Image.fromarray(SIXTEEN_BIT.astype(np.int32)), "TIFF")


@pytest.mark.parametrize(
    "make",
    [grey16_png, lambda: grey16_tiff("<"), lambda: grey16_tiff(">"), int32_tiff],
    ids=["png-16", "tiff-16-little-endian", "tiff-16-big-endian", "tiff-int32"],
)
def test_wide_greyscale_is_scaled_to_8_bits_not_clipped(make: Callable[[], bytes]) -> None:
    image = decode_image(make())
    assert_rgb(image, (8, 2))
    grey = pixels(image)[..., 0]
    assert grey[0, 3] == 255  # 65535
    assert grey[0, 2] == 128  # 32768, not clipped to 255
    assert grey[0, 0] == 0 and grey[0, 1] == 1  # 0 and 257
    assert np.array_equal(grey, np.rint(SIXTEEN_BIT / 257.0))
    assert np.array_equal(pixels(image)[..., 0], pixels(image)[..., 2])


def test_16_bit_grey_png_is_opened_as_16_bit() -> None:
    # Guards the test above: the file really holds 16-bit samples.
    assert Image.open(io.BytesIO(grey16_png())).mode.startswith("I")


def test_16_bit_rgb_png_keeps_the_high_byte() -> None:
    samples = [(65535, 32768, 0), (0, 65535, 257), (32768, 0, 65535)]
    row = b"\x00" + b"".join(struct.pack(">HHH", *rgb) for rgb in samples)
    image = decode_image(raw_png(3, 1, 16, 2, row))
    assert_rgb(image, (3, 1))
    assert [image.getpixel((x, 0)) for x in range(3)] == [(255, 128, 0), (0, 255, 1), (128, 0, 255)]


def test_float_tiff_is_stretched_to_the_full_8_bit_range() -> None:
    values = np.linspace(-1.0, 3.0, 16, dtype=np.float32).reshape(2, 8)
    image = decode_image(encode(Image.fromarray(values), "TIFF"))
    assert_rgb(image, (8, 2))
    grey = pixels(image)[..., 0].ravel()
    assert grey[0] == 0 and grey[-1] == 255
    assert np.all(np.diff(grey) > 0)


# --- Animations: the first frame ------------------------------------------------------------------

FRAMES = [RED, GREEN, BLUE]


@pytest.mark.parametrize(
    "fmt,params",
    [
        ("GIF", {"duration": 100, "loop": 0}),
        ("WEBP", {"duration": 100, "loop": 0, "lossless": True}),
        ("PNG", {"duration": 100, "loop": 0}),  # APNG
        ("TIFF", {}),  # multi-page
    ],
    ids=["gif", "webp", "apng", "tiff-multipage"],
)
def test_animated_images_return_the_first_frame(fmt: str, params: dict) -> None:
    first, *rest = [solid(colour) for colour in FRAMES]
    data = encode(first, fmt, save_all=True, append_images=rest, **params)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    image = decode_image(data)
    assert_rgb(image, (32, 24))
    assert np.all(pixels(image) == RED)


def test_animated_gif_first_frame_keeps_its_detail(source: Image.Image) -> None:
    first = source.quantize(256)
    data = encode(first, "GIF", save_all=True, append_images=[solid(GREEN, source.size)])
    image = decode_image(data)
    assert_rgb(image, source.size)
    assert np.array_equal(pixels(image), pixels(first.convert("RGB")))


# --- EXIF orientation ----------------------------------------------------------------------------


def marked(width: int = 48, height: int = 32) -> Image.Image:
    """Grey, with a red marker in the stored top-left corner."""
    image = solid(GREY, (width, height))
    image.paste(RED, (0, 0, 8, 8))
    return image


def exif_orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


def corner(image: Image.Image, name: str) -> tuple[int, int, int]:
    x = 3 if "left" in name else image.width - 4
    y = 3 if "top" in name else image.height - 4
    return image.getpixel((x, y))


def is_red(rgb: tuple[int, int, int]) -> bool:
    return rgb[0] > 200 and rgb[1] < 60 and rgb[2] < 60


CORNERS = ["top-left", "top-right", "bottom-left", "bottom-right"]

# orientation: (where the stored top-left ends up, numpy equivalent of the transpose, size swapped)
ORIENTATIONS = {
    1: ("top-left", lambda a: a, False),
    2: ("top-right", np.fliplr, False),
    3: ("bottom-right", lambda a: np.rot90(a, 2), False),
    4: ("bottom-left", np.flipud, False),
    5: ("top-left", lambda a: a.transpose(1, 0, 2), True),
    6: ("top-right", lambda a: np.rot90(a, -1), True),  # rotate 90 clockwise to display
    7: ("bottom-right", lambda a: np.rot90(a, 2).transpose(1, 0, 2), True),
    8: ("bottom-left", lambda a: np.rot90(a, 1), True),  # rotate 90 counter-clockwise
}


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_jpeg_exif_orientation_is_applied(orientation: int) -> None:
    where, transform, swapped = ORIENTATIONS[orientation]
    data = encode(marked(), "JPEG", quality=95, exif=exif_orientation(orientation))
    stored = Image.open(io.BytesIO(data)).convert("RGB")  # Pillow keeps the stored layout
    assert stored.size == (48, 32) and is_red(corner(stored, "top-left"))

    image = decode_image(data)
    assert_rgb(image, (32, 48) if swapped else (48, 32))
    assert [name for name in CORNERS if is_red(corner(image, name))] == [where]
    assert np.array_equal(pixels(image), transform(pixels(stored)))


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_exif_orientation_is_applied_in_other_formats(fmt: str) -> None:
    params = {"lossless": True} if fmt == "WEBP" else {}
    image = decode_image(encode(marked(), fmt, exif=exif_orientation(6), **params))
    assert_rgb(image, (32, 48))
    assert image.getpixel((28, 3)) == RED  # stored top-left, now top-right
    assert image.getpixel((3, 3)) == GREY


@pytest.mark.parametrize("value", [0, 9, 65535])
def test_out_of_range_orientation_is_ignored(value: int) -> None:
    image = decode_image(encode(marked(), "PNG", exif=exif_orientation(value)))
    assert_rgb(image, (48, 32))
    assert image.getpixel((3, 3)) == RED


def malformed_exif(orientation: int) -> bytes:
    """EXIF whose CellLength tag (0x0109, SHORT in the TIFF spec) is stored as ASCII text.

    Pillow reads such a block but cannot write it back (struct.error); found by fuzzing EXIF.
    """
    text = b"Canon\x00"
    text_offset = 8 + 2 + 2 * 12 + 4  # TIFF header, entry count, two entries, next-IFD offset
    entries = struct.pack(">HHII", 0x0109, 2, len(text), text_offset)
    entries += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff = b"MM\x00\x2a" + struct.pack(">IH", 8, 2) + entries + struct.pack(">I", 0) + text
    return b"Exif\x00\x00" + tiff


@pytest.mark.parametrize("orientation", [1, 6])
def test_malformed_exif_does_not_fail_the_image(orientation: int) -> None:
    data = encode(marked(), "JPEG", quality=95, exif=malformed_exif(orientation))
    image = decode_image(data)
    assert_rgb(image, (32, 48) if orientation == 6 else (48, 32))
    assert is_red(corner(image, "top-right" if orientation == 6 else "top-left"))


# --- Errors -----------------------------------------------------------------------------------------


def load_error(data: bytes) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        decode_image(data)
    assert str(info.value).startswith("Could not load input image. Cause: ")
    return info.value


@pytest.mark.parametrize(
    "data,cause",
    [
        (b"", "the image is empty (0 bytes)"),
        (np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "not an image"),
        (b"hello, this is text and not a picture", "not an image"),
        (b"<html><body>404 Not Found</body></html>", "not an image"),
        (b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n", "not an image"),
        (b"\x89PNG\r\n\x1a\n", "not an image"),  # a signature alone
    ],
    ids=["empty", "random-bytes", "text", "html", "pdf", "png-signature-only"],
)
def test_non_images_are_refused_with_a_clear_cause(data: bytes, cause: str) -> None:
    assert cause in load_error(data).cause


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_truncated_images_are_refused(source: Image.Image, fmt: str) -> None:
    data = encode(source, fmt)
    cause = load_error(data[: len(data) // 2]).cause
    if fmt in ("JPEG", "PNG"):
        assert "corrupt or truncated" in cause
    else:
        assert "corrupt or truncated" in cause or "not an image" in cause


def test_png_claiming_a_huge_size_is_refused_before_decoding() -> None:
    bomb = raw_png(100_000, 100_000, 8, 2, b"\x00" * 300)
    assert "too large to decode safely" in load_error(bomb).cause


@pytest.mark.parametrize("limit", [2_000, 1_000], ids=["over-the-limit", "over-twice-the-limit"])
def test_images_over_the_pixel_limit_are_refused(
    monkeypatch: pytest.MonkeyPatch, source: Image.Image, limit: int
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)  # source has 3072 pixels
    assert "too large to decode safely" in load_error(encode(source, "PNG")).cause


def test_images_under_the_pixel_limit_decode(monkeypatch: pytest.MonkeyPatch, source: Image.Image) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 48)
    assert_rgb(decode_image(encode(source, "PNG")), source.size)


FUZZ_FORMATS = {
    "jpeg": ("JPEG", {}),
    "png": ("PNG", {}),
    "gif": ("GIF", {}),
    "webp": ("WEBP", {}),
    "bmp": ("BMP", {}),
    "tiff": ("TIFF", {"compression": "tiff_deflate"}),
    "jpeg-exif": ("JPEG", {"exif": exif_orientation(6)}),
}


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the corrupt EXIF/TIFF tags
@pytest.mark.parametrize("fmt,params", FUZZ_FORMATS.values(), ids=FUZZ_FORMATS.keys())
def test_damaged_files_only_ever_raise_image_load_error(fmt: str, params: dict) -> None:
    data = encode(photo(40, 30, seed=1), fmt, **params)
    rng = random.Random(fmt)
    damaged = [data[:cut] for cut in range(1, len(data), max(1, len(data) // 15))]
    for _ in range(25):
        flipped = bytearray(data)
        for _ in range(rng.randint(1, 6)):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        damaged.append(bytes(flipped))
    for sample in damaged:
        try:
            image = decode_image(sample)
        except ImageLoadError as exc:
            assert exc.cause
        else:
            assert image.mode == "RGB"


# --- Base64 -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def png_bytes(source: Image.Image) -> bytes:
    return encode(source, "PNG")


def wrap(text: str, width: int, separator: str) -> str:
    return separator.join(text[i : i + width] for i in range(0, len(text), width))


@pytest.mark.parametrize(
    "dress",
    [
        lambda s: s,
        lambda s: "data:image/png;base64," + s,
        lambda s: "DATA:IMAGE/PNG;BASE64," + s,
        lambda s: "data:image/png;charset=utf-8;base64," + s,
        lambda s: "data:;base64," + s,
        lambda s: wrap(s, 76, "\n"),  # MIME line breaks
        lambda s: wrap(s, 64, "\r\n"),
        lambda s: "  \n" + wrap(s, 10, " \t ") + "\n ",
        lambda s: " data:image/png;base64,\n" + wrap(s, 76, "\n"),
    ],
    ids=[
        "plain",
        "data-url",
        "data-url-upper",
        "data-url-params",
        "data-url-bare",
        "newlines",
        "crlf",
        "spaces-tabs",
        "data-url-and-newlines",
    ],
)
def test_base64_variants_decode_to_the_same_bytes(png_bytes: bytes, dress: Callable[[str], str]) -> None:
    assert decode_base64(dress(b64(png_bytes))) == png_bytes


# 0xfb 0xff 0xbf uses both characters that differ between alphabets; odd lengths need padding.
ALPHABET_BYTES = [b"\xfb\xff\xbf", b"\xfb\xff\xbf\xfe", b"\xfb\xff\xbf\xfe\xff", b"\xff\xfe"]


@pytest.mark.parametrize("data", ALPHABET_BYTES, ids=lambda data: data.hex())
@pytest.mark.parametrize(
    "alphabet,strip_padding",
    [("standard", True), ("urlsafe", False), ("urlsafe", True)],
    ids=["standard-unpadded", "urlsafe", "urlsafe-unpadded"],
)
def test_base64_alphabets_and_missing_padding(data: bytes, alphabet: str, strip_padding: bool) -> None:
    text = (base64.b64encode if alphabet == "standard" else base64.urlsafe_b64encode)(data).decode()
    if strip_padding:
        text = text.rstrip("=")
    assert decode_base64(text) == data


@pytest.mark.parametrize(
    "transform",
    [
        lambda d: base64.urlsafe_b64encode(d).decode(),
        lambda d: base64.urlsafe_b64encode(d).decode().rstrip("="),
        lambda d: b64(d).rstrip("="),
    ],
    ids=["urlsafe", "urlsafe-unpadded", "standard-unpadded"],
)
def test_real_images_in_other_base64_forms_decode(
    loader: ImageLoader, source: Image.Image, transform: Callable[[bytes], str]
) -> None:
    data = encode(source, "PNG") + b"\0"  # a trailing byte makes the length need padding
    text = b64(data)
    assert text.endswith("=") and ("+" in text or "/" in text)  # the case under test really occurs
    image = loader.load("base64", transform(data))
    assert np.array_equal(pixels(image), pixels(source))


@pytest.mark.parametrize(
    "value",
    ["not base64!!", "abcde", "YQ===", "%%%%", "aGVsbG8=aGVsbG8=", "data:image/png;base64,@@@@", "héllo"],
)
def test_invalid_base64_is_refused(value: str) -> None:
    with pytest.raises(ImageLoadError) as info:
        decode_base64(value)
    assert info.value.cause == "the value is not valid base64"


@pytest.mark.parametrize("value", [None, 123, 1.5, b"aGVsbG8=", ["aGVsbG8="], {"value": "aGVsbG8="}])
def test_non_string_base64_is_refused(value: object) -> None:
    with pytest.raises(ImageLoadError) as info:
        decode_base64(value)
    assert "must be a string" in info.value.cause


@pytest.mark.parametrize(
    "value,cause",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("data:image/png;base64,", "empty"),
        (b64(b"plain text"), "not an image"),
    ],
)
def test_valid_base64_that_is_no_image_is_refused(loader: ImageLoader, value: str, cause: str) -> None:
    with pytest.raises(ImageLoadError) as info:
        loader.load("base64", value)
    assert cause in info.value.cause


# --- ImageLoader ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["base64", "BASE64", "Base64"])
def test_load_base64_type_is_case_insensitive(
    loader: ImageLoader, source: Image.Image, png_bytes: bytes, kind: str
) -> None:
    image = loader.load(kind, b64(png_bytes))
    assert_rgb(image, source.size)
    assert np.array_equal(pixels(image), pixels(source))


def test_load_applies_the_full_decode(loader: ImageLoader) -> None:
    data = encode(marked(), "JPEG", quality=95, exif=exif_orientation(6))
    image = loader.load("base64", "data:image/jpeg;base64," + b64(data))
    assert_rgb(image, (32, 48))
    assert is_red(corner(image, "top-right"))


@pytest.mark.parametrize("kind", ["numpy", "NUMPY", "numpy_object", "Numpy_Object"])
def test_numpy_inputs_are_refused_as_disabled(loader: ImageLoader, kind: str) -> None:
    with pytest.raises(ImageLoadError) as info:
        loader.load(kind, "gASVAAAAAAAAAAA=")  # would be a pickle; never unpickled
    assert "numpy image inputs are disabled" in info.value.cause
    assert "base64" in info.value.cause  # tells the client what to send instead


@pytest.mark.parametrize("kind", ["file", "jpeg", "", "base-64", "urls"])
def test_unknown_types_are_refused(loader: ImageLoader, png_bytes: bytes, kind: str) -> None:
    with pytest.raises(ImageLoadError) as info:
        loader.load(kind, b64(png_bytes))
    assert info.value.cause == f"unsupported image type {kind!r}; use 'base64' or 'url'"


@pytest.mark.parametrize("value", [None, 42, ["https://example.com/a.png"]])
def test_url_type_needs_a_string(loader: ImageLoader, value: object) -> None:
    with pytest.raises(ImageLoadError) as info:
        loader.load("url", value)
    assert "must be a string" in info.value.cause


@pytest.mark.parametrize("prefix", ["", "data:image/png;base64,"])
def test_load_bare_treats_other_strings_as_base64(
    loader: ImageLoader, source: Image.Image, png_bytes: bytes, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loader.fetcher, "fetch", lambda url: pytest.fail("a base64 string was fetched"))
    image = loader.load_bare(prefix + b64(png_bytes))
    assert np.array_equal(pixels(image), pixels(source))


def test_load_bare_refuses_a_non_image_string(loader: ImageLoader) -> None:
    with pytest.raises(ImageLoadError) as info:
        loader.load_bare("a cat sitting on a mat")
    assert info.value.cause == "the value is not valid base64"


@pytest.mark.parametrize("url", ["https://example.com/cat.png", "http://example.com/cat.png"])
def test_load_bare_hands_http_strings_to_the_fetcher(
    loader: ImageLoader, png_bytes: bytes, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the routing is tested here; the fetcher is stubbed, nothing touches the network.
    fetched: list[str] = []
    monkeypatch.setattr(loader.fetcher, "fetch", lambda u: fetched.append(u) or png_bytes)
    image = loader.load_bare(url)
    assert fetched == [url]
    assert_rgb(image, (64, 48))


def test_large_jpeg_decodes_reduced_but_reports_full_upright_size() -> None:
    from app.media.decode import decode_reduced

    data = encode(photo(2000, 1500), "JPEG")
    decoded = decode_reduced(data, min_side=384)
    assert (decoded.width, decoded.height) == (2000, 1500)
    assert decoded.image.size == (1000, 750)  # libjpeg's 1/2 scale: the largest keeping each side >= 384
    rotated = decode_reduced(encode(photo(2000, 1500), "JPEG", exif=exif_orientation(6)), min_side=384)
    assert (rotated.width, rotated.height) == (1500, 2000) and rotated.image.size == (750, 1000)
    assert decode_reduced(encode(photo(640, 480), "JPEG"), min_side=384).image.size == (640, 480)
    full = decode_reduced(data, min_side=None)
    assert full.image.size == (2000, 1500)
    # PNG has no reduced decoding: the full image comes back.
    assert decode_reduced(encode(photo(900, 800), "PNG"), min_side=224).image.size == (900, 800)
