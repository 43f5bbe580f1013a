"""The fixed inputs every runtime and precision of a tower is compared on, against torch fp32."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from app.model.preprocess import probe_images
from app.model.variants import Variant

PROBE_TEXTS = (
    "a photo of a dog",
    "a red car parked on a street at night",
    "two people hiking in the mountains",
    "a bowl of soup",
    "an aerial view of a city",
    "a close-up of a cat's face",
    "text on a white page",
    "a sunset",
)
PROBE_IMAGES = 8
# The torch fp32 embeddings of the probes, stored in each export entry: later checks need no torch.
PROBE_FILE = "probe.npz"


def probe_inputs(variant: Variant, tokenizer: Callable[[Sequence[str]], np.ndarray]) -> dict[str, np.ndarray]:
    return {"image": probe_images(variant.image_size, PROBE_IMAGES), "text": tokenizer(list(PROBE_TEXTS))}
