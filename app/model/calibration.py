"""Inputs that static int8 calibrates its activation ranges on: varied and photo-like, never the smooth probe only.

Natural photos have a 1/f power spectrum, hard edges, flat regions, text and JPEG artefacts; calibrating
on smooth fields alone leaves the ranges too narrow for real images and costs cosine (0.82 measured
elsewhere). Real photos would be better still, but none ship with pe-search, so these are generated,
deterministically, with NumPy and Pillow.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from app.model.preprocess import pe_pixels, stack

CAPTIONS = (
    "a photo of a dog running on the beach",
    "a red car parked on a street at night",
    "two people hiking in snowy mountains",
    "a bowl of ramen with an egg and green onions",
    "an aerial view of a city with tall buildings",
    "a close-up of a cat's face with green eyes",
    "a receipt with the total of 12.99",
    "the interior of a modern kitchen",
    "a child holding a yellow balloon",
    "a screenshot of a spreadsheet",
    "a bird sitting on a branch in the rain",
    "A VINTAGE POSTER FOR A JAZZ CONCERT, 1962",
    "a plate of sushi on a wooden table",
    "a forest path in autumn with fallen leaves",
    "a black-and-white portrait of an old man",
    "a cup of coffee next to a laptop",
    "boats in a harbour at sunset",
    "a diagram of the solar system",
    "a person riding a bicycle through a busy market in Hanoi",
    "an x-ray of a human hand",
    "a cartoon drawing of a happy robot",
    "cars stuck in traffic on a highway",
    "a wedding cake with white roses",
    "a tennis player serving the ball",
)


def _pink(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Colour noise with a 1/f^a spectrum, channels correlated as luminance dominates in photos."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    freq = np.sqrt(fx**2 + fy**2)
    freq[0, 0] = 1.0
    alpha = rng.uniform(1.6, 2.6)
    channels = []
    for _ in range(3):
        spectrum = rng.standard_normal(freq.shape) + 1j * rng.standard_normal(freq.shape)
        spectrum /= freq ** (alpha / 2)
        spectrum[0, 0] = 0
        channels.append(np.fft.irfft2(spectrum, s=(height, width)))
    field = np.stack(channels, -1) @ (np.eye(3) * rng.uniform(0.2, 0.6) + rng.uniform(0.4, 0.8))
    field = (field - field.mean()) / (field.std() + 1e-8)
    return np.clip(rng.uniform(60, 190, 3) + field * rng.uniform(25, 60), 0, 255)


def _scene(rng: np.random.Generator, index: int) -> Image.Image:
    height, width = int(rng.integers(180, 640)), int(rng.integers(180, 640))
    image = Image.fromarray(_pink(rng, height, width).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(0, 8))):
        x0, y0 = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
        box = (x0, y0, x0 + int(rng.integers(10, width // 2)), y0 + int(rng.integers(10, height // 2)))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    if index % 3 == 0:  # text, as on signs, documents and screenshots
        for line in range(int(rng.integers(1, 6))):
            draw.text((int(rng.integers(0, width // 2)), 12 + 18 * line), CAPTIONS[(index + line) % len(CAPTIONS)])
    if index % 4 == 1:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 3))))
    if index % 5 == 2:
        image = image.convert("L").convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(40, 95)))
    return Image.open(io.BytesIO(buffer.getvalue()))


def calibration_images(size: int, count: int = 32, seed: int = 0) -> list[np.ndarray]:
    """`count` batches of one preprocessed image each: static scales must not depend on batch makeup."""
    rng = np.random.default_rng(seed)
    return [stack([pe_pixels(_scene(rng, index), size)]) for index in range(count)]
