"""Ingest throughput: the loop a user would write against `pe-search ingest`'s pipeline.

Both run on the same N generated JPEGs (640x480 to 4000x3000) and the same fp32 weights
in one process. Baseline: PIL open -> PE preprocessing -> `encode_image` one at a time.
Ours: the Ingestor end to end (decode threads, draft-mode JPEG, batches, SQLite + FAISS
writes, final checkpoint), in each precision mode. "compute" is the model alone on the
already-preprocessed pixels at the same batch size: the floor the pipeline is held to.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from bench.machine import describe

SIZES = [(640, 480), (1024, 768), (1600, 1200), (2048, 1536), (3000, 2000), (4000, 3000)]
DEFAULT_N = {"PE-Core-T16-384": 48, "PE-Core-B16-224": 48, "PE-Core-L14-336": 16}


def make_jpegs(folder: Path, n: int) -> list[Path]:
    """Photo-like JPEGs: smooth gradients, shapes and sensor noise, sizes cycling through SIZES."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        width, height = SIZES[i % len(SIZES)]
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        phase = rng.uniform(0, 6.28, 3)
        base = np.stack(
            [127 + 100 * np.sin(x / width * 3 + phase[c]) * np.cos(y / height * 2 + phase[c]) for c in range(3)], -1
        )
        image = Image.fromarray(np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(12):
            x0, y0 = int(rng.integers(0, width - 50)), int(rng.integers(0, height - 50))
            box = (x0, y0, x0 + int(rng.integers(40, width // 3)), y0 + int(rng.integers(40, height // 3)))
            draw.ellipse(box, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        path = folder / f"img{i:04d}.jpg"
        image.save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def naive_loop(encoder: Any, paths: list[Path]) -> tuple[float, np.ndarray]:
    """What a user writes with open_clip: one image at a time, fp32, decode and model in series."""
    import open_clip

    from app.model.variants import PE_INTERPOLATION, PE_MEAN, PE_RESIZE_MODE, PE_STD

    model = encoder.loader.torch_model().model
    preprocess = open_clip.image_transform(
        encoder.variant.image_size,
        is_train=False,
        mean=PE_MEAN,
        std=PE_STD,
        interpolation=PE_INTERPOLATION,
        resize_mode=PE_RESIZE_MODE,
    )
    out = []
    began = time.perf_counter()
    with torch.no_grad():
        for path in paths:
            pixels = preprocess(Image.open(path).convert("RGB")).unsqueeze(0)
            features = model.encode_image(pixels)
            out.append(torch.nn.functional.normalize(features, dim=-1).cpu().numpy())
    return time.perf_counter() - began, np.concatenate(out)


def pipeline(
    encoder: Any, paths: list[Path], *, jpeg_draft: bool, batch: int, workers: int
) -> tuple[float, np.ndarray]:
    from app.ingest.pipeline import Ingestor
    from app.ingest.sources import folder_items
    from app.media.fetch import UrlFetcher, UrlPolicy
    from app.services.storage import open_store
    from app.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for path in paths:
            (folder / path.name).hardlink_to(path)
        store = open_store(Settings(data_dir=Path(tmp) / "data"))
        ingestor = Ingestor(
            store=store,
            encoder=encoder,
            fetcher=UrlFetcher(UrlPolicy()),
            batch_size=batch,
            workers=workers,
            jpeg_draft=jpeg_draft,
        )
        began = time.perf_counter()
        summary = ingestor.run(folder_items(folder), collection="bench")
        seconds = time.perf_counter() - began
        assert summary.added == len(paths), summary.to_dict()
        by_name = {}
        for rows in store.iter_images(store.collection("bench").id):
            by_name.update({Path(row.uri).name: np.frombuffer(row.vector, dtype=np.float32) for row in rows})
        store.close()
    return seconds, np.stack([by_name[p.name] for p in paths])


def compute_only(encoder: Any, paths: list[Path], batch: int) -> float:
    from app.media.decode import decode_reduced

    pixels = [
        encoder.transform(decode_reduced(p.read_bytes(), min_side=encoder.variant.image_size).image) for p in paths
    ]
    began = time.perf_counter()
    for start in range(0, len(pixels), batch):
        encoder.embed_pixels(pixels[start : start + batch])
    return time.perf_counter() - began


def decode_cost(paths: list[Path], image_size: int, *, draft: bool) -> float:
    """Seconds per image to read, decode and PE-preprocess on one thread: what feeding a GPU costs."""
    from app.media.decode import decode_reduced
    from app.model.preprocess import PETransform

    transform = PETransform(image_size)
    began = time.perf_counter()
    for path in paths:
        transform(decode_reduced(path.read_bytes(), min_side=image_size if draft else None).image)
    return (time.perf_counter() - began) / len(paths)


def _cosine(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    cos = np.sum(a * b, axis=1)
    return {"mean": round(float(cos.mean()), 5), "min": round(float(cos.min()), 5)}


def run_model(
    model: str, folder: Path, n: int, batch: int, workers: int, modes: list[str], device: str
) -> dict[str, Any]:
    from app.model.encoder import PEEncoder
    from app.model.variants import get_variant

    paths = sorted(folder.glob("*.jpg"))[:n]
    variant = get_variant(model)
    fp32 = PEEncoder(variant, weights="random", device=device, image_precision="fp32", batch_size=batch).load()
    if fp32.device != "cpu":
        modes = [m for m in modes if m != "int8"]  # dynamic quantisation is CPU-only
    pipeline(fp32, paths[:2], jpeg_draft=True, batch=batch, workers=workers)  # warm-up: first-pass allocations
    naive_s, reference = naive_loop(fp32, paths)
    rows: dict[str, Any] = {"naive loop": {"seconds": naive_s, "cosine": _cosine(reference, reference)}}
    rows["compute only (fp32)"] = {"seconds": compute_only(fp32, paths, batch)}
    for mode in modes:
        encoder = (
            fp32
            if mode == "fp32"
            else PEEncoder(variant, weights="random", device=device, image_precision=mode, batch_size=batch).load()
        )
        if mode != "fp32":
            rows[f"compute only ({mode})"] = {"seconds": compute_only(encoder, paths, batch)}
        for draft in (True, False) if mode == "fp32" else (True,):
            seconds, vectors = pipeline(encoder, paths, jpeg_draft=draft, batch=batch, workers=workers)
            name = f"pe-search ingest ({mode}{', draft JPEG' if draft else ', full decode'})"
            rows[name] = {"seconds": seconds, "cosine": _cosine(reference, vectors)}
    decode = {
        f"{'draft' if d else 'full'}_ms": round(decode_cost(paths, variant.image_size, draft=d) * 1000, 1)
        for d in (True, False)
    }
    for row in rows.values():
        row["images_per_second"] = round(n / row["seconds"], 3)
        row["x_naive"] = round(naive_s / row["seconds"], 2)
        row["seconds"] = round(row["seconds"], 2)
    return {
        "model": model,
        "device": str(fp32.device),
        "n": n,
        "batch": batch,
        "workers": workers,
        "rows": rows,
        "decode_per_image_one_thread": decode,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench ingest")
    parser.add_argument("--models", default=",".join(DEFAULT_N))
    parser.add_argument("--n", type=int, default=0, help="images per model (default: per model, see DEFAULT_N)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--modes", default="fp32,int8", help="image-tower precisions; int8 is skipped off the CPU")
    parser.add_argument("--device", default="auto", help="auto: CUDA when present")
    parser.add_argument("--quick", action="store_true", help="T16 on 8 images: a smoke run")
    parser.add_argument("--out", default="bench/results/ingest.json")
    args = parser.parse_args(argv)
    models = ["PE-Core-T16-384"] if args.quick else args.models.split(",")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        count = 8 if args.quick else args.n or max(DEFAULT_N.get(m, 32) for m in models)
        make_jpegs(Path(tmp), count)
        for model in models:
            n = 8 if args.quick else args.n or DEFAULT_N.get(model, 32)
            result = run_model(model, Path(tmp), n, args.batch, args.workers, args.modes.split(","), args.device)
            results.append(result)
            _print(result)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": describe(), "results": results}, indent=2))
    return 0


def _print(result: dict[str, Any]) -> None:
    print(
        f"\n{result['model']} on {result['device']}: {result['n']} JPEGs 640x480..4000x3000, batch {result['batch']}, {result['workers']} decode threads"
    )
    print(f"{'path':<44}{'s':>8}{'img/s':>8}{'x naive':>9}{'cos mean':>10}{'cos min':>9}")
    for name, row in result["rows"].items():
        cos = row.get("cosine") or {}
        print(
            f"{name:<44}{row['seconds']:>8}{row['images_per_second']:>8}{row['x_naive']:>9}{cos.get('mean', ''):>10}{cos.get('min', ''):>9}"
        )
    rows = result["rows"]
    ours, compute = rows["pe-search ingest (fp32, draft JPEG)"], rows["compute only (fp32)"]
    print(f"pipeline / model compute (fp32): {ours['seconds'] / compute['seconds']:.2f}x")
    decode = result["decode_per_image_one_thread"]
    print(
        f"read + decode + preprocess on one thread: {decode['draft_ms']} ms/image with draft JPEG, {decode['full_ms']} ms full decode"
    )
