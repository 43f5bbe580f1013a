"""Ray ingestion: the local engine against the Ray engine on this machine, same folder, same model.

A folder of generated JPEGs is ingested into a fresh store by the local engine (decode threads
and one model in this process), then by the Ray engine on a local Ray instance, once per actor
layout (e.g. 2 actors of 1 CPU, 1 actor of 2 CPUs). Reports images/s end to end (the Ray
runs include starting their actor pool, as every run does) and in steady state (from the first
committed batch to the last), with ratios against the local engine of the same run. The local
engine's model is loaded before its clock starts; the Ray actors load theirs inside the run.

    python -m bench ray [--quick] [--images 320] [--model PE-Core-T16-384] [--layouts 2x1,1x2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.machine import describe


def _photo(seed: int, size: tuple[int, int]) -> Image.Image:
    """Gradients, blocks and noise: JPEG work like a photo's, unlike a flat colour."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, ((x // 24 + y // 24) % 2) * 180 + 40], axis=-1)
    for _ in range(8):
        x0, y0 = rng.integers(0, width - 40), rng.integers(0, height - 40)
        pixels[y0 : y0 + height // 4, x0 : x0 + width // 5] = rng.integers(0, 256, 3)
    pixels = pixels + rng.integers(-16, 17, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_folder(root: Path, count: int, size: tuple[int, int]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        _photo(i, size).save(root / f"img{i:05d}.jpg", "JPEG", quality=88)


class _Timeline:
    """Progress callback: when each committed batch landed, to separate start-up from steady state."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, int]] = []

    def __call__(self, summary) -> None:  # noqa: ANN001 - IngestSummary
        if not self.marks or summary.added != self.marks[-1][1]:
            self.marks.append((time.monotonic(), summary.added))

    def steady_rate(self) -> float | None:
        stored = [(t, n) for t, n in self.marks if n > 0]
        # Ray hands back results in input order, sometimes several at once: too few commits say nothing.
        if len(stored) < 4:
            return None
        (t0, n0), (t1, n1) = stored[0], stored[-1]
        return round((n1 - n0) / (t1 - t0), 2) if t1 > t0 else None


def _store(root: Path):  # noqa: ANN202 - VectorStore
    from index.db import create_db_engine
    from index.store import VectorStore

    root.mkdir(parents=True, exist_ok=True)
    return VectorStore(engine=create_db_engine(f"sqlite:///{root / 'meta.db'}"), index_dir=root / "indexes").open()


def _result(summary, timeline: _Timeline, started: float) -> dict:  # noqa: ANN001 - IngestSummary
    seconds = time.monotonic() - started
    first = next((t for t, n in timeline.marks if n > 0), None)
    return {
        "added": summary.added,
        "failed": len(summary.failed),
        "seconds": round(seconds, 2),
        "first_batch_seconds": round(first - started, 2) if first else None,
        "images_per_s": round(summary.added / seconds, 2),
        "steady_images_per_s": timeline.steady_rate(),
    }


def run_local(folder: Path, work: Path, settings, batch: int) -> dict:  # noqa: ANN001 - Settings
    from app.ingest.pipeline import Ingestor
    from app.ingest.sources import folder_items
    from app.media.fetch import UrlFetcher
    from app.model.registry import ModelRegistry

    encoder = ModelRegistry(settings).get(settings.model)  # loaded before the clock starts, as a server's is
    ingestor = Ingestor(
        store=_store(work / "local"),
        encoder=encoder,
        fetcher=UrlFetcher(settings.url_policy()),
        batch_size=batch,
        workers=settings.ingest_workers,
    )
    timeline = _Timeline()
    started = time.monotonic()
    summary = ingestor.run(folder_items(folder), collection="bench", progress=timeline)
    # Same settings in the actors, so the same precision choice there.
    return {**_result(summary, timeline, started), "image_precision": encoder.info.image_precision}


def run_ray(folder: Path, work: Path, settings, batch: int, actors: int, cpus: float) -> dict:  # noqa: ANN001 - Settings
    from app.ingest.ray_engine import RayIngestor, RayOptions
    from app.ingest.sources import folder_items

    ingestor = RayIngestor(
        store=_store(work / f"ray-{actors}x{cpus:g}"),
        settings=settings,
        model=settings.model,
        batch_size=batch,
        options=RayOptions(actors=actors, cpus_per_actor=cpus),
    )
    timeline = _Timeline()
    started = time.monotonic()
    summary = ingestor.run(folder_items(folder), collection="bench", progress=timeline)
    return _result(summary, timeline, started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench ray", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="48 images: a smoke run, not a figure")
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--size", default="640x480", help="generated JPEG size, WxH")
    parser.add_argument("--batch", type=int, default=16, help="items per batch (local commit, Ray actor call)")
    parser.add_argument("--model", default="PE-Core-T16-384")
    parser.add_argument("--layouts", default="2x1,1x2", help="Ray actor layouts, ACTORSxCPUS each")
    parser.add_argument("--out", default="bench/results/ray.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from app.ingest.ray_setup import connect, prepare_ray_process
    from app.settings import Settings

    prepare_ray_process(local=True)  # this bench's process start, before Ray is imported

    count = 48 if args.quick else args.images
    size = tuple(int(v) for v in args.size.split("x"))
    layouts = [(int(a), float(c)) for a, c in (item.split("x") for item in args.layouts.split(","))]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="pe-bench-ray-") as tmp:
        work = Path(tmp)
        make_folder(work / "images", count, size)
        settings = Settings(model=args.model, weights="random", device="cpu", data_dir=work / "data")
        results["local"] = run_local(work / "images", work, settings, args.batch)
        started = time.monotonic()
        connect(None, num_cpus=os.cpu_count(), object_store_memory=512 * 1024**2)
        ray_start = round(time.monotonic() - started, 2)
        import ray

        # Bench traffic stays on loopback: the local instance must not listen on the machine's address.
        gcs = ray.get_runtime_context().gcs_address
        if not gcs.startswith("127.0.0.1:"):
            raise SystemExit(f"the local Ray instance is not on loopback ({gcs}); refusing to run")
        for actors, cpus in layouts:
            results[f"ray {actors}x{cpus:g}"] = run_ray(work / "images", work, settings, args.batch, actors, cpus)
    base = results["local"]
    # The machine may be shared: the load average says how much of it other work took meanwhile.
    load = [round(v, 2) for v in os.getloadavg()]
    report = {
        "machine": describe(),
        "model": args.model,
        "images": count,
        "size": args.size,
        "batch": args.batch,
        "ray_start_seconds": ray_start,
        "load_average_1_5_15": load,
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(
        f"{count} JPEGs of {args.size}, {args.model} (random weights), batch {args.batch}; "
        f"Ray start-up {ray_start} s (not counted); image precision {base['image_precision']}; load average at the end {load}"
    )
    print(
        f"{'engine':<12}{'added':>7}{'seconds':>9}{'1st batch s':>12}{'img/s':>8}{'vs local':>10}{'steady img/s':>14}{'vs local':>10}"
    )
    for name, r in results.items():
        steady = r["steady_images_per_s"]
        steady_ratio = f"x{steady / base['steady_images_per_s']:.2f}" if steady and base["steady_images_per_s"] else "-"
        ratio = f"x{r['images_per_s'] / base['images_per_s']:.2f}"
        print(
            f"{name:<12}{r['added']:>7}{r['seconds']:>9}{r['first_batch_seconds']!s:>12}{r['images_per_s']:>8}{ratio:>10}"
            f"{steady if steady is not None else '-':>14}{steady_ratio:>10}"
        )
    return 0
