"""Precision modes per tower: time per item and cosine to fp32 on the same weights.

Each mode is what `PE_SEARCH_IMAGE_PRECISION` / `PE_SEARCH_TEXT_PRECISION` selects; fp32
is the baseline of every row. Images are smooth random fields (PE's input range), texts
a fixed set of captions.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import describe

TEXTS = [
    f"a photo of {thing} {place}"
    for thing in (
        "a dog",
        "two cats",
        "a red car",
        "an old man",
        "a bowl of soup",
        "a mountain",
        "a bicycle",
        "a laptop",
    )
    for place in ("at night", "on a beach", "in a city", "indoors")
]


def _time(fn: Any, reps: int) -> float:
    fn()  # warm-up: allocations and one-time kernel selection
    began = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - began) / reps


def run_model(model: str, modes: list[str], batch: int, reps: int, device: str) -> list[dict[str, Any]]:
    from app.model.encoder import PEEncoder
    from app.model.preprocess import probe_images
    from app.model.variants import get_variant

    variant = get_variant(model)
    pixels = list(probe_images(variant.image_size, batch))
    texts = (TEXTS * (batch // len(TEXTS) + 1))[:batch]
    rows, reference = [], {}
    # fp32 first: it is every row's reference.
    for mode in ["fp32", *(m for m in modes if m != "fp32")]:
        # The torch runtime's modes (bench runtime compares the runtimes).
        encoder = PEEncoder(
            variant,
            weights="random",
            device=device,
            runtime="torch",
            image_precision=mode,
            text_precision=mode,
            batch_size=batch,
        ).load()
        cases = {
            ("image", batch): lambda encoder=encoder: encoder.embed_pixels(pixels),
            ("text", 1): lambda encoder=encoder: encoder.embed_texts(texts[:1]),
            ("text", batch): lambda encoder=encoder: encoder.embed_texts(texts),
        }
        for (kind, size), fn in cases.items():
            seconds = _time(fn, reps)
            vectors = fn()
            reference.setdefault((kind, size), vectors)
            cosine = np.sum(vectors * reference[(kind, size)], axis=1)
            rows.append(
                {
                    "model": model,
                    "device": str(encoder.device),
                    "tower": kind,
                    "batch": size,
                    "mode": mode,
                    "ms_per_item": round(seconds / size * 1000, 2),
                    "cos_min": round(float(cosine.min()), 5),
                }
            )
        del encoder
    for row in rows:
        base = next(r for r in rows if (r["tower"], r["batch"], r["mode"]) == (row["tower"], row["batch"], "fp32"))
        row["x_fp32"] = round(base["ms_per_item"] / row["ms_per_item"], 2)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench precision")
    parser.add_argument("--models", default="PE-Core-T16-384,PE-Core-B16-224,PE-Core-L14-336")
    parser.add_argument("--modes", default="fp32,bf16,int8")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument(
        "--device", default="auto", help="auto: CUDA when present (use fp16/bf16 modes there, not int8)"
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="bench/results/precision.json")
    args = parser.parse_args(argv)
    models = ["PE-Core-T16-384"] if args.quick else args.models.split(",")
    batch, reps = (4, 1) if args.quick else (args.batch, args.reps)
    rows = [row for model in models for row in run_model(model, args.modes.split(","), batch, reps, args.device)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": describe(), "rows": rows}, indent=2))
    print(f"{'model':<18}{'tower':<7}{'batch':>6}{'mode':>6}{'ms/item':>10}{'x fp32':>8}{'cos min':>9}")
    for r in rows:
        print(
            f"{r['model']:<18}{r['tower']:<7}{r['batch']:>6}{r['mode']:>6}{r['ms_per_item']:>10}{r['x_fp32']:>8}{r['cos_min']:>9}"
        )
    return 0
