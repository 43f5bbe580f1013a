"""The query path through the store itself, on a real database: what a search costs a user.

`python -m bench query ... --store sqlite,postgres` fills a real SQLite file and/or a real
PostgreSQL server on loopback with N images (the bench vectors, JSON metadata, sources), gives
the collection its index (a real `reindex`, or with `--index-from DIR` a checkpoint an earlier
`--keep` run wrote over the same vectors, copied in as the store's own), reopens the store the
way a server starts (memory-mapped, timed, RSS measured), tunes it as a build does
(index/tuning.py), then times single queries through `VectorStore.search` (catch-up check,
index search, re-rank included) and the metadata fetch of 100 hits (`VectorStore.images`).
With `--http`, a real `pe-search serve` over the SQLite store answers the same queries by
vector, against the store's own time for search plus metadata in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import requests

from bench.server import SpawnedServer, rss_bytes

K = 10
MODEL = "PE-Core-B16-224"  # 1024-d, as the bench vectors


def _pct(ms: list[float]) -> dict[str, float]:
    return {f"p{q}_ms": round(float(np.percentile(ms, q)), 3) for q in (50, 95, 99)}


def fill_store(
    store: Any,
    cid: int,
    vectors: np.ndarray,
    rows: int | None = None,
    batch: int = 5_000,
    meta: Callable[[int], dict[str, Any]] | None = None,
) -> float:
    """`rows` images (default one per vector, cycling through them past the end) in committed batches; seconds.

    `meta(i)`, when given, adds keys to row i's metadata (bench/metadata_filter.py's selective keys)."""
    from index import crud

    rows = len(vectors) if rows is None else rows
    started = time.perf_counter()
    for start in range(0, rows, batch):
        items = [
            crud.NewImage(
                sha256=f"{i:064x}",
                uri=f"/photos/{i // 1000:04d}/{i:07d}.jpg",
                width=1024,
                height=768,
                format="JPEG",
                byte_size=200_000 + i % 5000,
                vector=vectors[i % len(vectors)],
                meta={
                    "caption": f"photo {i}",
                    "tags": ["bench", f"t{i % 97}"],
                    "camera": "x100",
                    **(meta(i) if meta else {}),
                },
                root="/photos",
            )
            for i in range(start, min(rows, start + batch))
        ]
        with store.sessions() as session, session.begin():
            crud.add_batch(session, collection_id=cid, items=items)
    return round(time.perf_counter() - started, 1)


def _install(source: Path, target: Path) -> None:
    """A kept checkpoint (index, re-rank segments, tuning) as the store's own: ids 1..N are the same
    rows; model and generation are relabelled to the new collection's."""
    from index.ann import checkpoint as ckpt

    target.mkdir(parents=True, exist_ok=True)
    pointer = ckpt.read_pointer(source)
    assert pointer is not None, f"no checkpoint in {source}"
    for path in source.iterdir():
        if path.name not in (ckpt.POINTER, "LOCK") and not path.name.startswith("."):
            shutil.copy2(path, target / path.name)
    pointer.model, pointer.generation = MODEL, 0
    (target / ckpt.POINTER).write_text(json.dumps(pointer.__dict__))


def _queries(store: Any, cid: int, queries: np.ndarray, truth: np.ndarray, **knobs: int) -> dict[str, Any]:
    store.search(cid, queries[0], K, **knobs)
    found, ms = [], []
    for q in queries:
        started = time.perf_counter()
        hits = store.search(cid, q, K, **knobs)
        ms.append((time.perf_counter() - started) * 1000)
        found.append({h.id for h in hits})
    recall = float(np.mean([len(f & set(t.tolist())) / K for f, t in zip(found, truth, strict=True)]))
    return {"recall": round(recall, 4), **_pct(ms)}


def _float16_error(live: Any, queries: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """The same re-rank with the candidates' vectors rounded to float16 (PE_SEARCH_RERANK_VECTORS=float16)."""
    from index.query import search_knobs

    knobs = search_knobs(live, {})
    rerank = knobs.pop("rerank", 1)
    errors, r32, r16 = [], [], []
    for q, t in zip(queries, truth, strict=True):
        _, ids = live.index.search(q, K * rerank, None, **knobs)
        found, exact, _ = live.rerank.lookup(ids)
        half = exact.astype(np.float16).astype(np.float32)
        s32, s16 = exact @ q, half @ q
        errors.append(float(np.max(np.abs(s32 - s16))))
        r32.append(len(set(found[np.argsort(-s32)[:K]].tolist()) & set(t.tolist())) / K)
        r16.append(len(set(found[np.argsort(-s16)[:K]].tolist()) & set(t.tolist())) / K)
    return {
        "max_abs_score_error": round(max(errors), 6),
        "recall_float32": round(float(np.mean(r32)), 4),
        "recall_float16": round(float(np.mean(r16)), 4),
    }


def _metadata(store: Any, rows: int) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    picks = [rng.choice(np.arange(1, rows + 1), 100, replace=False).tolist() for _ in range(65)]
    for ids in picks[:5]:
        store.images(ids)
    ms = []
    for ids in picks[5:]:
        started = time.perf_counter()
        assert len(store.images(ids)) == 100
        ms.append((time.perf_counter() - started) * 1000)
    return _pct(ms)


def run_backend(
    backend: str, url: str, workdir: Path, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, args: Any
) -> dict[str, Any]:
    from index.db import create_db_engine
    from index.store import VectorStore
    from index.tuning import TuningGoal

    index_dir = workdir / "indexes"
    goal = TuningGoal()
    store = VectorStore(engine=create_db_engine(url), index_dir=index_dir, tuning=goal).open()
    cid = store.create_collection("bench", model=MODEL, dim=vectors.shape[1], index_type=args.store_index).id
    out: dict[str, Any] = {"backend": backend, "rows": len(vectors), "fill_s": fill_store(store, cid, vectors)}
    if args.index_from:
        store.engine.dispose()
        _install(args.index_from, index_dir / str(cid))
        out["index_from"] = str(args.index_from)
    else:
        started = time.perf_counter()
        store.reindex("bench")  # the build, its re-rank segment and its tuning, as `pe-search reindex` runs them
        out["build_s"] = round(time.perf_counter() - started, 1)
        store.close()
    before = rss_bytes(os.getpid())
    started = time.perf_counter()
    store = VectorStore(engine=create_db_engine(url), index_dir=index_dir, tuning=goal).open()
    out["open_s"] = round(time.perf_counter() - started, 2)
    out["open_rss_mb"] = round((rss_bytes(os.getpid()) - before) / 2**20, 1)
    live = store.live.synced(cid)
    spec = live.index.spec
    out["index"] = {"kind": spec.kind, "params": spec.params, "mapped": live.index.is_mapped}
    out["tuned"] = live.checkpoint.tuned
    defaults = {k: spec.params[k] for k in ("ef_search", "nprobe", "rerank") if k in spec.params}
    out["defaults"] = {"knobs": defaults, **_queries(store, cid, queries, truth, **defaults)}
    # The tuned settings: a first pass (pages of the mapped files touched for the first time), then warm.
    out["store_search_first_pass"] = _queries(store, cid, queries, truth)
    out["store_search"] = _queries(store, cid, queries, truth)
    if live.rerank is not None:
        out["float16_rerank"] = _float16_error(live, queries, truth)
    out["metadata_100"] = _metadata(store, len(vectors))
    out["db_bytes"] = _db_bytes(store, url)
    files = [p for p in (index_dir / str(cid)).iterdir() if p.is_file()]
    out["index_file_bytes_per_vector"] = round(
        sum(p.stat().st_size for p in files if p.suffix == ".faiss") / len(vectors), 1
    )
    out["rerank_file_bytes_per_vector"] = round(
        sum(p.stat().st_size for p in files if p.name.startswith("vectors-")) / len(vectors), 1
    )
    store.engine.dispose()
    return out


def _db_bytes(store: Any, url: str) -> int | None:
    if url.startswith("sqlite"):
        return Path(url.split("///", 1)[1]).stat().st_size
    with store.engine.connect() as connection:
        return int(connection.exec_driver_sql("SELECT pg_database_size(current_database())").scalar_one())


def http_overhead(workdir: Path, queries: np.ndarray, store_out: dict[str, Any]) -> dict[str, Any]:
    """The same vector queries through a real server: POST /search, hits with their metadata."""
    from index.db import create_db_engine
    from index.store import VectorStore

    data = workdir / "data"
    data.mkdir(exist_ok=True)
    shutil.move(str(workdir / "meta.db"), data / "pe-search.db")
    for suffix in ("-wal", "-shm"):
        if (workdir / f"meta.db{suffix}").exists():
            shutil.move(str(workdir / f"meta.db{suffix}"), data / f"pe-search.db{suffix}")
    shutil.move(str(workdir / "indexes"), data / "indexes")
    store = VectorStore(
        engine=create_db_engine(f"sqlite:///{data / 'pe-search.db'}"), index_dir=data / "indexes"
    ).open()
    cid = store.collection("bench").id
    local = []
    for q in queries:
        started = time.perf_counter()
        store.images([h.id for h in store.search(cid, q, K)])
        local.append((time.perf_counter() - started) * 1000)
    store.close()
    server = SpawnedServer(
        {"PE_SEARCH_DATA_DIR": str(data), "PE_SEARCH_WEIGHTS": "random", "PE_SEARCH_MODEL": "PE-Core-T16-384"}
    )
    try:
        server.wait_ready()
        session = requests.Session()
        bodies = [{"collection": "bench", "vector": q.tolist(), "top_k": K} for q in queries]
        session.post(f"{server.url}/search", json=bodies[0], timeout=60).raise_for_status()
        remote = []
        for body in bodies:
            started = time.perf_counter()
            response = session.post(f"{server.url}/search", json=body, timeout=60)
            remote.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
    finally:
        server.stop()
        shutil.rmtree(server.data_dir, ignore_errors=True)
    here, there = _pct(local), _pct(remote)
    return {
        "store_search_and_metadata": here,
        "http": there,
        "added_p50_ms": round(there["p50_ms"] - here["p50_ms"], 3),
    }


def run(args: argparse.Namespace, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> list[dict[str, Any]]:
    results = []
    for backend in args.store.split(","):
        workdir = Path(tempfile.mkdtemp(prefix=f"pe-store-{backend}-"))
        server = None
        try:
            if backend == "sqlite":
                url = f"sqlite:///{workdir / 'meta.db'}"
            else:
                from tests.support import pg

                server = pg.new_server().start()
                url = server.url(server.create_database())
            result = run_backend(backend, url, workdir, vectors, queries, truth, args)
            print(f"store ({backend}): {json.dumps(result)}", flush=True)
            if args.index_from is None:  # later backends take this build instead of repeating it
                kept = Path(tempfile.mkdtemp(prefix="pe-store-index-"))
                shutil.copytree(workdir / "indexes" / "1", kept, dirs_exist_ok=True)
                args.index_from = kept
            if backend == "sqlite" and args.http:
                result["http"] = http_overhead(workdir, queries, result)
                print(f"http: {json.dumps(result['http'])}", flush=True)
            results.append(result)
        finally:
            if server is not None:
                server.stop()
            shutil.rmtree(workdir, ignore_errors=True)
    return results
