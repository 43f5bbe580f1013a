"""Near-duplicates at scale: the store's blockwise FAISS range search over N x 1024-d vectors.

A real SQLite store is filled with clustered synthetic vectors (bench/query.py's mixture) plus
planted near-copies (1% of N, cosine ~0.995 to their original). Timed: `VectorStore.near_duplicates`
grouped as the service groups them, with the process's peak RSS sampled during the call, against
numpy brute force over the same vectors in memory (blockwise, upper triangle only, what a careful
script does). Both must find the same pairs on a flat index.

    python -m bench duplicates --n 100000
    python -m bench duplicates --quick
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import describe
from bench.query import Clustered, generate
from bench.server import rss_bytes
from index.db import create_db_engine
from index.dto import NewImage
from index.store import VectorStore

THRESHOLD = 0.99
INSERT_BATCH = 5_000


class PeakRss:
    """The process's peak resident memory while the block runs, sampled every 20 ms."""

    def __init__(self) -> None:
        self.peak = self.start = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRss:
        self.start = self.peak = rss_bytes(os.getpid())
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_bytes(os.getpid()))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(os.getpid()))


def planted(n: int, dim: int, seed: int = 1) -> np.ndarray:
    """n vectors in all: 99% from the mixture, 1% near-copies of some of those."""
    copies = n // 100
    base = generate(Clustered(n - copies, dim), n - copies, seed)
    rng = np.random.default_rng(seed + 1)
    picks = rng.choice(n - copies, copies, replace=False)
    copies = base[picks] + rng.standard_normal((len(picks), dim), dtype=np.float32) * (0.1 / np.sqrt(dim))
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    return np.concatenate([base, copies])


def fill(store: VectorStore, vectors: np.ndarray, index_type: str = "auto", meta=None) -> tuple[int, list[int]]:
    """A `bench` collection of the vectors, committed in batches; `meta(i)` gives row i's metadata."""
    info = store.create_collection("bench", model="PE-Core-L14-336", dim=vectors.shape[1], index_type=index_type)
    ids: list[int] = []
    for start in range(0, len(vectors), INSERT_BATCH):
        rows = [
            NewImage(
                sha256=hashlib.sha256(str(start + i).encode()).hexdigest(),
                uri=f"/bench/{start + i}.jpg",
                width=640,
                height=480,
                format="JPEG",
                byte_size=1000 + i,
                vector=v,
                meta=meta(start + i) if meta else {},
            )
            for i, v in enumerate(vectors[start : start + INSERT_BATCH])
        ]
        ids += [image_id for image_id, _ in store.add_images(info.id, rows)]
    return info.id, ids


def brute_force(vectors: np.ndarray, ids: list[int], threshold: float, block: int = 4096) -> set[tuple[int, int]]:
    id_array = np.asarray(ids)
    pairs: set[tuple[int, int]] = set()
    for start in range(0, len(vectors), block):
        rows = vectors[start : start + block]
        scores = rows @ vectors[start:].T  # only this block and after: the upper triangle
        r, c = np.nonzero(scores >= threshold)
        keep = c > r
        pairs.update(zip(id_array[start + r[keep]].tolist(), id_array[start + c[keep]].tolist()))
    return pairs


def run(args: argparse.Namespace, index_type: str, vectors: np.ndarray) -> dict[str, Any]:
    from app.services.duplicates import group_pairs

    with tempfile.TemporaryDirectory(prefix="pe-dups-") as tmp:
        root = Path(tmp)
        store = VectorStore(engine=create_db_engine(f"sqlite:///{root / 'b.db'}"), index_dir=root / "idx").open()
        started = time.perf_counter()
        collection_id, ids = fill(store, vectors, index_type)
        if index_type == "ivfpq":
            store.reindex("bench")  # the quantizer trained on the whole collection, as a reindex does
        fill_s = time.perf_counter() - started
        kind = store.collection("bench").live_index
        with PeakRss() as memory:
            started = time.perf_counter()
            pairs = {(a, b) for a, b, _ in store.near_duplicates(collection_id, args.threshold)}
            groups = group_pairs((a, b, 1.0) for a, b in pairs)
            ours_s = time.perf_counter() - started
        store.close(checkpoint=False)
    result: dict[str, Any] = {
        "index": kind,
        "fill_s": round(fill_s, 1),
        "seconds": round(ours_s, 2),
        "pairs": len(pairs),
        "groups": len(groups),
        "rss_before_mb": round(memory.start / 2**20),
        "rss_peak_mb": round(memory.peak / 2**20),
        "rss_growth_mb": round((memory.peak - memory.start) / 2**20),
    }
    if index_type == "flat" and not args.skip_baseline:
        started = time.perf_counter()
        expected = brute_force(vectors, ids, args.threshold)
        result["numpy_seconds"] = round(time.perf_counter() - started, 2)
        result["numpy_over_ours"] = round(result["numpy_seconds"] / ours_s, 2)
        result["same_pairs_as_numpy"] = pairs == expected
        result["recall_vs_numpy"] = round(len(pairs & expected) / max(1, len(expected)), 4)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench duplicates", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="vectors, the planted copies included")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--threshold", type=float, default=THRESHOLD)
    parser.add_argument("--indexes", default="flat", help="comma-separated: flat, hnsw, ivfpq")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--quick", action="store_true", help="10k vectors")
    parser.add_argument("--out", default="bench/results/duplicates.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.n = 10_000
    vectors = planted(args.n, args.dim)
    report: dict[str, Any] = {"machine": describe(), "n": len(vectors), "dim": args.dim, "threshold": args.threshold}
    report["runs"] = [run(args, kind, vectors) for kind in args.indexes.split(",")]
    print(json.dumps(report, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0
