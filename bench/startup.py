"""Start-up and memory: loading a large index checkpoint read in vs memory-mapped, resident memory
per model variant, and a real server's time to ready over a large collection.

Each measurement runs in a fresh subprocess so its RSS is its own. The baseline for index loading
is FAISS's plain `read_index` (the whole file copied into memory); ours maps it (PE_SEARCH_INDEX_MMAP,
on by default). The files were just written, so both read from the page cache: a cold disk adds
its read time to the plain load only, since the mapped load reads nothing up front.

    python -m bench startup --index-dir /tmp/pe-query-index     # checkpoints from `bench query --keep`
    python -m bench startup --quick                              # small index, T16 only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import describe

VARIANTS = ["PE-Core-T16-384", "PE-Core-S16-384", "PE-Core-B16-224", "PE-Core-L14-336", "PE-Core-G14-448"]

_LOAD_CHILD = """
import json, sys, time, numpy as np
from pathlib import Path
from bench.server import rss_bytes
import os, faiss
faiss.omp_set_num_threads(2)
from index.ann import checkpoint as ckpt
directory, mmap = Path(sys.argv[1]), sys.argv[2] == "1"
before = rss_bytes(os.getpid())
started = time.perf_counter()
index, mark = ckpt.load(directory, mmap=mmap)
loaded = time.perf_counter() - started
after_load = rss_bytes(os.getpid())
rng = np.random.default_rng(0)
q = rng.standard_normal((21, index.dim)).astype(np.float32)
q /= np.linalg.norm(q, axis=1, keepdims=True)
ms = []
for row in q:
    t = time.perf_counter(); index.search(row, 10); ms.append((time.perf_counter() - t) * 1000)
print(json.dumps({"load_s": loaded, "rss_load_mb": (after_load - before) / 2**20, "first_query_ms": ms[0],
                  "query_p50_ms": float(np.median(ms[1:])), "rss_after_queries_mb": (rss_bytes(os.getpid()) - before) / 2**20,
                  "count": index.count, "kind": index.spec.kind, "file_mb": mark.size / 2**20}))
"""

_MODEL_CHILD = """
import json, os, sys, time
from bench.server import rss_bytes
import torch
from PIL import Image
torch.set_num_threads(2)
from app.model.encoder import PEEncoder
from app.model.variants import get_variant
base = rss_bytes(os.getpid())
started = time.perf_counter()
encoder = PEEncoder(get_variant(sys.argv[1]), weights="random", device="cpu", runtime="torch", image_precision="fp32", text_precision="fp32").load()
load_s = time.perf_counter() - started
loaded = rss_bytes(os.getpid())
params = sum(p.numel() for p in encoder.loader.torch_model().model.parameters())
encoder.embed_images([Image.new("RGB", (640, 480), (120, 80, 40))])
embedded = rss_bytes(os.getpid())
peak = next(int(l.split()[1]) * 1024 for l in open(f"/proc/{os.getpid()}/status") if l.startswith("VmHWM"))
print(json.dumps({"variant": sys.argv[1], "params_m": params / 1e6, "load_s": load_s, "rss_base_mb": base / 2**20,
                  "rss_loaded_mb": loaded / 2**20, "rss_after_embed_mb": embedded / 2**20, "peak_mb": peak / 2**20}))
"""


def _child(code: str, *args: str, timeout: float = 1800) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(Path.cwd()), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=timeout)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def index_loads(index_dir: Path, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for directory in sorted(p for p in index_dir.iterdir() if (p / "CHECKPOINT.json").exists()):
        for mmap in ("0", "1"):
            runs = [_child(_LOAD_CHILD, str(directory), mmap) for _ in range(repeats)]
            good = [r for r in runs if "error" not in r]
            if not good:
                rows.append({"index": directory.name, "mmap": mmap == "1", **runs[0]})
                continue
            best = min(good, key=lambda r: r["load_s"])  # least disturbed by the machine's other load
            rows.append({"index": directory.name, "mmap": mmap == "1", **best})
    return rows


def model_memory(variants: list[str]) -> list[dict[str, Any]]:
    return [_child(_MODEL_CHILD, v) | {"variant": v} for v in variants]


def quick_index(workdir: Path, n: int) -> Path:
    from index.ann import checkpoint as ckpt
    from index.ann.vector_index import IndexSpec, VectorIndex

    rng = np.random.default_rng(0)
    index = VectorIndex.build(IndexSpec("flat"), 1024)
    for start in range(0, n, 50_000):
        part = rng.standard_normal((min(50_000, n - start), 1024), dtype=np.float32)
        index.add(np.arange(start + 1, start + 1 + len(part)), part / np.linalg.norm(part, axis=1, keepdims=True))
    ckpt.save(workdir / "flat", index, ckpt.Checkpoint(id_watermark=n, model="bench"))
    return workdir


def server_ready(n: int, mmaps: list[bool], model: str) -> list[dict[str, Any]]:
    """Time to /ready of a real `pe-search serve` over an n-image collection with a flat checkpoint."""
    from bench.server import SpawnedServer, rss_bytes
    from index import crud
    from index.db import create_db_engine
    from index.store import VectorStore

    data = Path(tempfile.mkdtemp(prefix="pe-startup-"))
    try:
        engine = create_db_engine(f"sqlite:///{data / 'pe-search.db'}")
        store = VectorStore(engine=engine, index_dir=data / "indexes").open()
        cid = store.create_collection("big", model=model, dim=1024, index_type="flat").id
        rng = np.random.default_rng(0)
        for start in range(0, n, 5_000):
            vectors = rng.standard_normal((min(5_000, n - start), 1024), dtype=np.float32)
            items = [
                crud.NewImage(
                    sha256=f"{start + i:064x}",
                    uri=f"/p/{start + i}.jpg",
                    width=1,
                    height=1,
                    format="JPEG",
                    byte_size=1,
                    vector=v / np.linalg.norm(v),
                )
                for i, v in enumerate(vectors)
            ]
            with store.sessions() as session, session.begin():
                crud.add_batch(session, collection_id=cid, items=items)
        store.reindex("big")  # rebuilds from the database and writes the checkpoint
        store.close()
        rows = []
        for mmap in mmaps:
            server = SpawnedServer(
                {
                    "PE_SEARCH_DATA_DIR": str(data),
                    "PE_SEARCH_WEIGHTS": "random",
                    "PE_SEARCH_MODEL": model,
                    "PE_SEARCH_INDEX_MMAP": "true" if mmap else "false",
                }
            )
            started = time.perf_counter()
            try:
                server.wait_ready(timeout=1200)
                rows.append(
                    {
                        "n": n,
                        "mmap": mmap,
                        "ready_s": round(time.perf_counter() - started, 2),
                        "rss_mb": round(rss_bytes(server.process.pid) / 2**20),
                    }
                )
            finally:
                server.stop()
        return rows
    finally:
        shutil.rmtree(data, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench startup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 20k flat index, T16 only, a 5k-image server")
    parser.add_argument(
        "--index-dir", type=Path, default=None, help="checkpoint dirs (one per index) from bench query --keep"
    )
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--server-n", type=int, default=200_000, help="images in the server's collection (0: skip)")
    parser.add_argument("--server-model", default="PE-Core-T16-384")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="bench/results/startup.json")
    args = parser.parse_args(argv)
    variants = ["PE-Core-T16-384"] if args.quick else [v for v in args.variants.split(",") if v]
    server_n = 5_000 if args.quick else args.server_n
    report: dict[str, Any] = {"machine": describe()}
    scratch = None
    index_dir = args.index_dir
    if index_dir is None:
        scratch = Path(tempfile.mkdtemp(prefix="pe-startup-index-"))
        index_dir = quick_index(scratch, 20_000 if args.quick else 1_000_000)
    try:
        report["index_load"] = index_loads(index_dir, args.repeats)
        _print_loads(report["index_load"])
        report["models"] = model_memory(variants)
        _print_models(report["models"])
        if server_n:
            report["server"] = server_ready(server_n, [False, True], args.server_model)
            for r in report["server"]:
                print(
                    f"server over {r['n']} images, mmap {'on ' if r['mmap'] else 'off'}: ready in {r['ready_s']} s, RSS {r['rss_mb']} MB"
                )
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


def _print_loads(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'index':<8}{'vectors':>9}{'file MB':>9}{'mmap':>6}{'load s':>9}{'vs read':>9}{'RSS MB':>8}{'1st q ms':>10}{'p50 q ms':>10}{'RSS after q':>12}"
    )
    plain = {r["index"]: r for r in rows if not r["mmap"] and "error" not in r}
    for r in rows:
        if "error" in r:
            print(f"{r['index']:<8} mmap={r['mmap']}: {r['error']}")
            continue
        ratio = plain[r["index"]]["load_s"] / r["load_s"] if r["index"] in plain else float("nan")
        print(
            f"{r['index']:<8}{r['count']:>9}{r['file_mb']:>9.0f}{'on' if r['mmap'] else 'off':>6}{r['load_s']:>9.3f}{f'x{ratio:.0f}':>9}"
            f"{r['rss_load_mb']:>8.0f}{r['first_query_ms']:>10.1f}{r['query_p50_ms']:>10.2f}{r['rss_after_queries_mb']:>12.0f}"
        )


def _print_models(rows: list[dict[str, Any]]) -> None:
    print(
        f"\n{'variant':<18}{'params M':>9}{'load s':>8}{'RSS base':>9}{'RSS loaded':>11}{'after embed':>12}{'peak':>8}  (MB, fp32, CPU)"
    )
    for r in rows:
        if "error" in r:
            print(f"{r['variant']:<18} {r['error']}")
            continue
        print(
            f"{r['variant']:<18}{r['params_m']:>9.1f}{r['load_s']:>8.1f}{r['rss_base_mb']:>9.0f}{r['rss_loaded_mb']:>11.0f}"
            f"{r['rss_after_embed_mb']:>12.0f}{r['peak_mb']:>8.0f}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
