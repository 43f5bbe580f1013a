"""`pe-search backup` and `restore` of a filled store: the time each takes, against a plain copy of the same files.

The store is N images of 1024-d vectors with a flat index, checkpointed, on SQLite in a temporary
data dir. The baseline is `shutil.copytree` of that data dir (what a user would do with the
server stopped); backup adds the online SQLite copy, the checkpoint lock and sha256 of every byte,
restore the verification before anything is written. The restored store is opened and searched.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import describe
from bench.store_query import MODEL, fill_store


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench backup")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    from app.services.backup import backup, restore
    from app.services.storage import open_store
    from app.settings import Settings

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    report: dict[str, Any] = {"machine": describe(), "n": args.n, "dim": args.dim}
    with tempfile.TemporaryDirectory() as tmp:
        original = Settings(data_dir=Path(tmp) / "data", index_memory_budget=64 * 1024**3)
        store = open_store(original)
        info = store.create_collection("bench", model=MODEL, dim=args.dim, index_type="flat")
        report["fill_seconds"] = round(fill_store(store, info.id, vectors), 1)
        store.close()  # checkpoints the index
        report["data_dir_bytes"] = _size(original.data_dir)

        began = time.perf_counter()
        shutil.copytree(original.data_dir, Path(tmp) / "plain-copy")
        copied = time.perf_counter() - began
        report["copytree_seconds"] = round(copied, 3)
        shutil.rmtree(Path(tmp) / "plain-copy")

        began = time.perf_counter()
        backup(original, Path(tmp) / "backup")
        backed_up = time.perf_counter() - began
        report["backup_seconds"] = round(backed_up, 3)
        restored = Settings(data_dir=Path(tmp) / "restored", index_memory_budget=64 * 1024**3)
        began = time.perf_counter()
        restore(restored, Path(tmp) / "backup")
        report["restore_seconds"] = round(time.perf_counter() - began, 3)
        began = time.perf_counter()
        reopened = open_store(restored)
        report["open_restored_seconds"] = round(time.perf_counter() - began, 3)
        hits = reopened.search(reopened.collection("bench").id, vectors[17], 5)
        assert hits[0].id == 18, hits  # the restored store answers: row 17 is image id 18
        reopened.close()
        report["backup_over_copytree"] = round(backed_up / copied, 2)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0
