"""Export then import of N x 1024-d vectors: MB/s, bit-for-bit vectors, the same search answers.

A real SQLite store is filled with bench/query.py's clustered vectors and small metadata; it is
exported (`export_collection`, npy shards + metadata Parquet, or the Parquet embedding column), and
the export imported into a second, empty store (`import_collection`). Baseline in the same run:
`np.save` then `np.load` of the same matrix, the disk's own speed for these bytes.

    python -m bench exchange --n 200000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.services.exchange.reader import import_collection
from app.services.exchange.writer import export_collection
from bench.duplicates import PeakRss, fill
from bench.machine import describe
from bench.query import Clustered, generate
from index.db import create_db_engine
from index.store import VectorStore


def open_store(root: Path) -> VectorStore:
    return VectorStore(engine=create_db_engine(f"sqlite:///{root / 'b.db'}"), index_dir=root / "idx").open()


def by_sha(store: VectorStore) -> dict[str, bytes]:
    info = store.collection(store.collections()[0].name)
    return {
        record.sha256: vector.tobytes()
        for records, vectors in store.iter_with_vectors(info.id, up_to=store.id_watermark(info.id))
        for record, vector in zip(records, vectors)
    }


def answers(store: VectorStore, queries: np.ndarray) -> list[list[tuple[str, float]]]:
    info = store.collection(store.collections()[0].name)
    out = []
    for q in queries:
        hits = store.search(info.id, q, 10)
        records = store.images([h.id for h in hits])
        out.append([(records[h.id].sha256, h.score) for h in hits])
    return out


def size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench exchange", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--format", choices=["npy", "parquet"], default="npy")
    parser.add_argument("--out", default="bench/results/exchange.json")
    args = parser.parse_args(argv)
    vectors = generate(Clustered(args.n, args.dim), args.n, seed=1)
    queries = Clustered(args.n, args.dim).sample(np.random.default_rng(2), 20, extra_noise=0.05)
    report: dict[str, Any] = {"machine": describe(), "n": args.n, "dim": args.dim, "format": args.format}
    with tempfile.TemporaryDirectory(prefix="pe-exchange-", dir="/tmp") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        source = open_store(root / "a")
        fill(source, vectors, meta=lambda i: {"n": i, "label": f"class-{i % 97}"})
        report["fill_s"] = round(time.perf_counter() - started, 1)

        started = time.perf_counter()
        with PeakRss() as export_memory:
            manifest = export_collection(source, collection="bench", out=root / "export", fmt=args.format)
        export_s = time.perf_counter() - started
        exported_mb = size_mb(root / "export")

        target = open_store(root / "b")
        started = time.perf_counter()
        with PeakRss() as import_memory:
            result = import_collection(target, source=root / "export")
        import_s = time.perf_counter() - started

        started = time.perf_counter()
        np.save(root / "raw.npy", vectors)
        raw_save = time.perf_counter() - started
        started = time.perf_counter()
        loaded = np.load(root / "raw.npy")
        raw_load = time.perf_counter() - started
        raw_mb = loaded.nbytes / 2**20

        report.update(
            count=manifest.count,
            shards=len(manifest.shards),
            export_mb=round(exported_mb, 1),
            export_s=round(export_s, 2),
            export_mb_per_s=round(exported_mb / export_s, 1),
            export_rss_growth_mb=round((export_memory.peak - export_memory.start) / 2**20),
            import_s=round(import_s, 2),
            import_mb_per_s=round(exported_mb / import_s, 1),
            import_rss_growth_mb=round((import_memory.peak - import_memory.start) / 2**20),
            imported=result.added,
            raw_np_save_mb_per_s=round(raw_mb / raw_save, 1),
            raw_np_load_mb_per_s=round(raw_mb / raw_load, 1),
            vectors_bit_for_bit=by_sha(source) == by_sha(target),
            same_search_answers=answers(source, queries) == answers(target, queries),
        )
        source.close(checkpoint=False)
        target.close(checkpoint=False)
    print(json.dumps(report, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0
