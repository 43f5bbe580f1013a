"""Composed queries: three text parts against one text, and against encoding the three one by one.

In-process, through the same SearchService as POST /search, random weights on the CPU, the text
cache off so every text reaches the model. Forward passes are counted with the encoder's hook.
  single     search(text=t)
  composed   search(text=t1, positive=[t2], negative=[t3]): one batch of three texts
  naive      three embed_texts([t]) calls, summed in numpy, then a search by that vector

    python -m bench compose --model PE-Core-B16-224 --repeats 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.model.variants import get_variant
from app.services.query_parts import QueryPart
from app.services.search import SearchQuery
from app.services.wiring import build_services
from app.settings import Settings
from bench.machine import describe
from index.dto import NewImage


async def scenario(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    passes: list[tuple[str, int]] = []
    settings = Settings(model=args.model, weights="random", device="cpu", data_dir=tmp, text_cache_size=0)
    services = build_services(settings, on_forward=lambda kind, n, *_: passes.append((kind, n)))
    variant = get_variant(args.model)
    info = services.store.create_collection("bench", model=args.model, dim=variant.dim)
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((args.images, variant.dim)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    services.store.add_images(
        info.id,
        [NewImage(f"{i:064x}", f"/b/{i}.jpg", 10, 10, "JPEG", 1, v) for i, v in enumerate(rows)],
    )
    search, embedder = services.search, services.embedder
    await search.search(SearchQuery(collection="bench", text="warm up"))  # loads the text tower

    async def single(i: int) -> None:
        await search.search(SearchQuery(collection="bench", text=f"a photo number {i}"))

    async def composed(i: int) -> None:
        parts = (QueryPart(text=f"on a beach {i}"), QueryPart(weight=-1, text=f"people {i}"))
        await search.search(SearchQuery(collection="bench", text=f"a dog {i}", parts=parts))

    async def naive(i: int) -> None:
        vectors = [(await embedder.embed_texts(args.model, [t]))[0] for t in (f"x{i}", f"y{i}", f"z{i}")]
        total = vectors[0] + vectors[1] - vectors[2]
        await search.search(SearchQuery(collection="bench", vector=tuple(total / np.linalg.norm(total))))

    out: dict[str, Any] = {}
    for name, run in (("single", single), ("composed", composed), ("naive", naive)):
        times, before = [], len(passes)
        for i in range(args.repeats):
            started = time.perf_counter()
            await run(i)
            times.append(time.perf_counter() - started)
        out[name] = {
            "median_ms": round(statistics.median(times) * 1000, 2),
            "forward_passes_per_query": (len(passes) - before) / args.repeats,
        }
    out["composed_over_single"] = round(out["composed"]["median_ms"] / out["single"]["median_ms"], 2)
    out["naive_over_composed"] = round(out["naive"]["median_ms"] / out["composed"]["median_ms"], 2)
    out["text_runtime"] = services.registry.get(args.model).info.towers.get("text")
    await services.aclose(checkpoint=False)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench compose", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="PE-Core-B16-224")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--out", default="bench/results/compose.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pe-compose-") as tmp:
        report = {"machine": describe(), "model": args.model, **asyncio.run(scenario(args, Path(tmp)))}
    print(json.dumps(report, indent=2, default=str))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0
