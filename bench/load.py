"""Bounded mixed load against a real uvicorn process on loopback.

Clients loop over a mix of embed_text, embed_image, text search and uploads for a fixed
duration, then the script reports errors, latency percentiles per kind, throughput and the
server's resident memory at start and end. It stops by itself and sends nothing off this host.

    python -m bench load --duration 60 --clients 8            # spawns a server (random weights)
    python -m bench load --url http://127.0.0.1:9001          # an already running one
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import random
import time
from collections import defaultdict
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
from PIL import Image

from bench.machine import describe
from bench.server import LOOPBACK, SpawnedServer, rss_bytes

MIX = [("embed_text", 0.45), ("embed_image", 0.2), ("search", 0.25), ("upload", 0.1)]
WORDS = [
    "dog",
    "cat",
    "beach",
    "car",
    "mountain",
    "red",
    "blue",
    "city",
    "night",
    "forest",
    "river",
    "person",
    "bicycle",
]


def jpeg(seed: int, size: tuple[int, int] = (320, 240)) -> str:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize(size).save(buffer, "JPEG", quality=85)
    return base64.b64encode(buffer.getvalue()).decode()


class Load:
    def __init__(self, url: str, clients: int, duration: float, max_requests: int) -> None:
        self.url, self.clients, self.duration, self.max_requests = url, clients, duration, max_requests
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, list[str]] = defaultdict(list)
        self.sent = 0
        self.images = [jpeg(seed) for seed in range(16)]
        self.upload_seed = 10_000

    def _request(self, kind: str, rng: random.Random) -> tuple[str, str, dict]:
        if kind == "embed_text":
            return "POST", "/perception_encoder/embed_text", {"text": " ".join(rng.sample(WORDS, 4))}
        if kind == "embed_image":
            return (
                "POST",
                "/perception_encoder/embed_image",
                {"image": {"type": "base64", "value": rng.choice(self.images)}},
            )
        if kind == "search":
            return "POST", "/search", {"text": "a photo of a " + rng.choice(WORDS), "top_k": 10}
        self.upload_seed += 1
        return (
            "POST",
            "/images",
            {"image": {"type": "base64", "value": jpeg(self.upload_seed)}, "metadata": {"n": self.upload_seed}},
        )

    async def client(self, number: int, http: httpx.AsyncClient, stop_at: float) -> None:
        rng = random.Random(number)
        kinds, weights = zip(*MIX)
        while time.monotonic() < stop_at and self.sent < self.max_requests:
            self.sent += 1
            kind = rng.choices(kinds, weights)[0]
            method, path, body = self._request(kind, rng)
            started = time.perf_counter()
            try:
                response = await http.request(method, path, json=body)
                if response.status_code >= 400:
                    self.errors[kind].append(f"{response.status_code}: {response.text[:200]}")
            except httpx.HTTPError as exc:
                self.errors[kind].append(f"{type(exc).__name__}: {exc}")
            self.latencies[kind].append(time.perf_counter() - started)

    async def run(self) -> float:
        async with httpx.AsyncClient(base_url=self.url, timeout=120) as http:
            # Seed the collection so searches have something to find.
            for image in self.images[:4]:
                await http.post("/images", json={"image": {"type": "base64", "value": image}})
            started = time.monotonic()
            await asyncio.gather(*(self.client(n, http, started + self.duration) for n in range(self.clients)))
            return time.monotonic() - started


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ms = np.array(values) * 1000
    return {
        "n": len(values),
        "p50": round(float(np.percentile(ms, 50)), 1),
        "p95": round(float(np.percentile(ms, 95)), 1),
        "p99": round(float(np.percentile(ms, 99)), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server on loopback (default: spawn one)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-requests", type=int, default=100_000, help="a hard cap on requests sent")
    parser.add_argument("--model", default="PE-Core-T16-384", help="model of a spawned server (random weights)")
    parser.add_argument("--out", default="bench/results/load.json")
    args = parser.parse_args(argv)
    if args.url and urlsplit(args.url).hostname not in LOOPBACK:
        parser.error("load goes to loopback addresses only (127.0.0.1, localhost, ::1)")
    server = None if args.url else SpawnedServer({"PE_SEARCH_WEIGHTS": "random", "PE_SEARCH_MODEL": args.model})
    try:
        if server:
            server.wait_ready()
        url = args.url or server.url
        load = Load(url, args.clients, args.duration, args.max_requests)
        asyncio.run(Load(url, 1, 3.0, 10).run())  # warm-up, not counted
        rss_start = rss_bytes(server.process.pid) if server else None
        elapsed = asyncio.run(load.run())
        rss_end = rss_bytes(server.process.pid) if server else None
    finally:
        if server:
            server.stop()
    everything = [v for values in load.latencies.values() for v in values]
    result = {
        "machine": describe(),
        "model": args.model,
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "requests": len(everything),
        "requests_per_second": round(len(everything) / elapsed, 2),
        "errors": sum(len(e) for e in load.errors.values()),
        "error_samples": {k: v[:3] for k, v in load.errors.items()},
        "latency_ms": {
            "all": percentiles(everything),
            **{k: percentiles(v) for k, v in sorted(load.latencies.items())},
        },
        "rss_mb": {"start": rss_start and round(rss_start / 2**20, 1), "end": rss_end and round(rss_end / 2**20, 1)},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(
        f"{result['requests']} requests in {result['seconds']} s ({result['requests_per_second']}/s), {result['errors']} errors"
    )
    print(f"{'kind':<12}{'n':>7}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}")
    for kind, stats in result["latency_ms"].items():
        print(
            f"{kind:<12}{stats.get('n', 0):>7}{stats.get('p50', 0):>10}{stats.get('p95', 0):>10}{stats.get('p99', 0):>10}"
        )
    print(f"server RSS: {result['rss_mb']['start']} MB at start, {result['rss_mb']['end']} MB at end")
    return 1 if result["errors"] else 0
