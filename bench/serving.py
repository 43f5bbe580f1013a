"""Serving: concurrent clients against a real uvicorn process, micro-batching on vs off.

For each mode a server is spawned (random weights, text cache off so every request reaches
the model); 1 client and then N clients send embed_text and embed_image requests. Reports
requests/s and p50/p95/p99, and the ratios the performance issue sets targets for.

    python -m bench serving [--clients 16] [--requests 160] [--model PE-Core-T16-384]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import httpx
import numpy as np

from bench.load import jpeg
from bench.machine import describe
from bench.server import SpawnedServer


async def _drive(url: str, kind: str, clients: int, total: int) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(total))
    images = [jpeg(seed) for seed in range(8)]

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors
        for n in counter:
            body = (
                {"text": f"a photo of thing number {n} {time.time_ns()}"}
                if kind == "text"
                else {"image": {"type": "base64", "value": images[n % len(images)]}}
            )
            started = time.perf_counter()
            response = await http.post(f"/perception_encoder/embed_{kind}", json=body)
            latencies.append(time.perf_counter() - started)
            errors += response.status_code != 200

    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        await http.post(
            f"/perception_encoder/embed_{kind}",
            json={"text": "warm"} if kind == "text" else {"image": {"type": "base64", "value": images[0]}},
        )
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": round(len(latencies) / elapsed, 2),
        "p50": round(float(np.percentile(ms, 50)), 1),
        "p95": round(float(np.percentile(ms, 95)), 1),
        "p99": round(float(np.percentile(ms, 99)), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench serving", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=160, help="requests per concurrent run")
    parser.add_argument("--model", default="PE-Core-T16-384")
    parser.add_argument("--out", default="bench/results/serving.json")
    args = parser.parse_args(argv)
    results: dict[str, dict] = {}
    for mode in ("off", "on"):
        server = SpawnedServer(
            {
                "PE_SEARCH_WEIGHTS": "random",
                "PE_SEARCH_MODEL": args.model,
                "PE_SEARCH_MICROBATCH": "true" if mode == "on" else "false",
                "PE_SEARCH_TEXT_CACHE_SIZE": "0",
            }
        )
        try:
            server.wait_ready()
            for kind in ("text", "image"):
                single = asyncio.run(_drive(server.url, kind, 1, max(args.requests // 4, 10)))
                many = asyncio.run(_drive(server.url, kind, args.clients, args.requests))
                results[f"{kind}/{mode}"] = {"1 client": single, f"{args.clients} clients": many}
        finally:
            server.stop()
    report = {"machine": describe(), "model": args.model, "clients": args.clients, "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"{'kind/batching':<14}{'clients':>8}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for name, runs in results.items():
        for clients, r in runs.items():
            print(
                f"{name:<14}{clients.split()[0]:>8}{r['rps']:>9}{r['p50']:>9}{r['p95']:>9}{r['p99']:>9}{r['errors']:>8}"
            )
    for kind in ("text", "image"):
        for mode in ("off", "on"):
            runs = list(results[f"{kind}/{mode}"].values())
            print(
                f"{kind} batching {mode}: throughput x{runs[1]['rps'] / runs[0]['rps']:.2f} at {args.clients} clients vs 1, "
                f"p99 {runs[1]['p99'] / runs[0]['p50']:.2f}x the single-request p50"
            )
    return 0
