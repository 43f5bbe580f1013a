"""Query path at scale: exact and approximate search over N x 1024-d unit vectors, and the metadata fetch.

The vectors are synthetic but clustered, not uniform: a few thousand Gaussian centres of uneven
size, each point its centre plus a shared low-rank component plus isotropic noise, normalised.
Uniform random unit vectors in 1024-d are a pathological worst case for approximate search (every
point is nearly equidistant from every other) and unlike real image embeddings, which have low
intrinsic dimension. Queries are held-out points of the same distribution with extra noise.

Baseline: numpy brute force (`vectors @ q` + argpartition), what a simple tool does. Against it,
the project's own indexes (index/ann/vector_index.py, built the way index/live.py builds them):
exact flat, HNSW (efSearch sweep) and IVF-PQ (nprobe sweep, with the store's exact re-rank of
k x rerank candidates). Then the metadata fetch of 100 results from a real SQLite store, the
call the search route makes (VectorStore.images), against fetching them one at a time.

    python -m bench query --quick             # 10k vectors, under a minute
    python -m bench query --n 1000000 --hnsw-n 200000 --keep /tmp/pe-query-index
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from bench.machine import describe
from bench.server import rss_bytes
from index.ann import checkpoint as ckpt
from index.ann.build import BuildPlan, build_index, plan_build
from index.ann.vector_index import IndexSpec, VectorIndex, choose_spec, parse_index_params

K = 10
CHUNK = 50_000
RANK = 32  # intrinsic dimension of the shared structure


class Clustered:
    """A fixed mixture: the same seed gives the same centres, so base points and queries share them."""

    def __init__(self, n: int, dim: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.dim = dim
        self.centres = _normalise(rng.standard_normal((max(64, n // 300), dim), dtype=np.float32))
        weights = rng.lognormal(0.0, 1.0, len(self.centres))
        self.weights = weights / weights.sum()
        self.basis = rng.standard_normal((RANK, dim), dtype=np.float32) / np.sqrt(dim)

    def sample(self, rng: np.random.Generator, rows: int, extra_noise: float = 0.0) -> np.ndarray:
        labels = rng.choice(len(self.centres), rows, p=self.weights)
        low_rank = rng.standard_normal((rows, RANK), dtype=np.float32) * 0.15
        noise = rng.standard_normal((rows, self.dim), dtype=np.float32) * ((0.35 + extra_noise) / np.sqrt(self.dim))
        return _normalise(self.centres[labels] + low_rank @ self.basis + noise)


def _normalise(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def generate(mixture: Clustered, n: int, seed: int) -> np.ndarray:
    out = np.empty((n, mixture.dim), np.float32)  # filled in chunks: 1M x 1024 is 4 GB, built once
    rng = np.random.default_rng(seed)
    for start in range(0, n, CHUNK):
        out[start : start + CHUNK] = mixture.sample(rng, min(CHUNK, n - start))
    return out


def chunks(vectors: np.ndarray, rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for start in range(0, len(vectors), rows):
        part = vectors[start : start + rows]
        yield np.arange(start + 1, start + 1 + len(part), dtype=np.int64), part  # ids as the database gives them


def exact_topk(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    _, ids = faiss.knn(queries, vectors, K, metric=faiss.METRIC_INNER_PRODUCT)
    return ids + 1


def recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:K].tolist()) & set(t.tolist())) / K for f, t in zip(found, truth)]))


def pct(ms: list[float]) -> tuple[float, float]:
    return round(float(np.percentile(ms, 50)), 3), round(float(np.percentile(ms, 95)), 3)


def timed_queries(queries: np.ndarray, run: Callable[[np.ndarray], np.ndarray]) -> tuple[list[np.ndarray], list[float]]:
    run(queries[0])  # warm
    found, ms = [], []
    for q in queries:
        started = time.perf_counter()
        ids = run(q)
        ms.append((time.perf_counter() - started) * 1000)
        found.append(ids)
    return found, ms


def numpy_baseline(vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    def run(q: np.ndarray) -> np.ndarray:
        scores = vectors @ q
        top = np.argpartition(-scores, K)[:K]
        return top[np.argsort(-scores[top])] + 1

    found, ms = timed_queries(queries, run)
    p50, p95 = pct(ms)
    return {"method": "numpy brute force", "params": "", "recall": recall(found, truth), "p50_ms": p50, "p95_ms": p95}


def index_file_bytes(index: VectorIndex, keep: Path | None, name: str) -> int:
    directory = (keep / name) if keep else Path(tempfile.mkdtemp(prefix="pe-query-"))
    try:
        saved = ckpt.save(directory, index, ckpt.Checkpoint(id_watermark=int(index.index.ntotal), model="bench"))
        return saved.size
    finally:
        if keep is None:
            shutil.rmtree(directory, ignore_errors=True)


def build_timed(
    spec: IndexSpec, vectors: np.ndarray, plan: BuildPlan, seed: int
) -> tuple[VectorIndex, dict[str, float]]:
    stamps: dict[str, float] = {}

    def sample(rows: int) -> np.ndarray:
        picked = np.sort(np.random.default_rng(seed).choice(len(vectors), rows, replace=False))
        return vectors[picked]

    def timed_chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        stamps["trained"] = time.perf_counter()
        yield from chunks(vectors, plan.chunk_rows)

    gc.collect()
    rss = rss_bytes(_pid())
    started = time.perf_counter()
    index = build_index(spec, vectors.shape[1], chunks=timed_chunks(), sample=sample, plan=plan)
    done = time.perf_counter()
    gc.collect()
    return index, {
        "build_s": round(done - started, 1),
        "train_s": round(stamps["trained"] - started, 1),
        "rss_delta_mb": round((rss_bytes(_pid()) - rss) / 2**20, 1),
    }


def _pid() -> int:
    import os

    return os.getpid()


def sweep(
    index: VectorIndex,
    vectors: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    knob: str,
    values: list[int],
    reranks: tuple[int, ...] = (4, 10),
) -> list[dict[str, Any]]:
    """Per setting: recall@10 and single-query FAISS time; for IVF-PQ also after the store's exact re-rank
    of k x rerank candidates (x4, x10 and the configured factor)."""
    rows = []
    factors = sorted({int(index.spec.params["rerank"]), *reranks}) if index.spec.kind == "ivfpq" else [1]
    for value in values:
        for rerank in factors:
            found, ms = timed_queries(
                queries, lambda q, rerank=rerank, value=value: index.search(q, K * rerank, **{knob: value})[1]
            )
            p50, p95 = pct(ms)
            row = {
                "method": index.spec.kind,
                "params": f"{knob}={value}",
                "recall_index": recall(found, truth),
                "p50_ms": p50,
                "p95_ms": p95,
            }
            if rerank > 1:
                reranked, rerank_ms = [], []
                for q, ids in zip(queries, found):
                    started = time.perf_counter()
                    scores = vectors[ids - 1] @ q  # the store scores the stored float vectors (from SQLite)
                    reranked.append(ids[np.argsort(-scores, kind="stable")[:K]])
                    rerank_ms.append((time.perf_counter() - started) * 1000)
                row["params"] += f" rerank={rerank}"
                row["rerank_p50_ms"] = pct(rerank_ms)[0]
                row["recall"] = recall(reranked, truth)
            else:
                row["recall"] = row["recall_index"]
            rows.append(row)
    return rows


def metadata_fetch(
    vectors: np.ndarray, rows: int, ivf_hits: list[np.ndarray], queries: np.ndarray, workdir: Path
) -> dict[str, Any]:
    """A real SQLite store of `rows` images (the bench vectors as their vectors), then timed fetches."""
    from bench.store_query import fill_store
    from index.db import create_db_engine, upgrade_database
    from index.store import VectorStore

    engine = create_db_engine(f"sqlite:///{workdir / 'meta.db'}")
    upgrade_database(engine)
    store = VectorStore(engine=engine, index_dir=workdir / "index")  # not opened: no index is loaded
    collection_id = store.create_collection("bench", model="bench", dim=vectors.shape[1], index_type="flat").id
    fill_s = fill_store(store, collection_id, vectors, rows)
    rng = np.random.default_rng(7)
    picks = [rng.choice(np.arange(1, rows + 1), 100, replace=False).tolist() for _ in range(60)]
    for ids in picks[:5]:
        store.images(ids)  # warm the page cache and the connection pool
    batched, single = [], []
    for ids in picks[5:]:
        started = time.perf_counter()
        got = store.images(ids)
        batched.append((time.perf_counter() - started) * 1000)
        assert len(got) == 100
    for ids in picks[5:25]:
        started = time.perf_counter()
        for i in ids:
            store.image(i)
        single.append((time.perf_counter() - started) * 1000)
    rerank_ms = []
    for q, ids in zip(queries, ivf_hits):
        started = time.perf_counter()
        store.query.exact(ids, q, K)  # the IVF-PQ re-rank as the store runs it: candidates' vectors from SQLite
        rerank_ms.append((time.perf_counter() - started) * 1000)
    size = (workdir / "meta.db").stat().st_size
    engine.dispose()
    return {
        "rows": rows,
        "fill_s": round(fill_s, 1),
        "db_mb": round(size / 2**20),
        "fetch100_p50_ms": pct(batched)[0],
        "fetch100_p95_ms": pct(batched)[1],
        "one_by_one_p50_ms": pct(single)[0],
        "one_by_one_p95_ms": pct(single)[1],
        "ivfpq_rerank_sqlite_p50_ms": pct(rerank_ms)[0] if rerank_ms else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench query", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10k vectors, for a smoke test")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--hnsw-n", type=int, default=200_000, help="HNSW size (its build is the slow one on 2 cores)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--baseline-queries", type=int, default=30, help="numpy and flat queries (each scans all N)")
    parser.add_argument("--db-rows", type=int, default=None, help="SQLite rows for the fetch (default: N)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-budget", type=int, default=8 * 1024**3)
    parser.add_argument("--keep", type=Path, default=None, help="write each index checkpoint here (for bench startup)")
    parser.add_argument("--nprobes", default="8,16,32,64,128", help="IVF-PQ nprobe values to sweep")
    parser.add_argument("--reranks", default="4,10", help="IVF-PQ re-rank factors to sweep (with the configured one)")
    parser.add_argument(
        "--reuse", type=Path, default=None, help="load the IVF-PQ index kept by an earlier --keep run (same --n)"
    )
    parser.add_argument("--ivf-params", default="", help="IVF-PQ parameters over auto's, e.g. opq=true,coarse=hnsw")
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: flat, ivfpq, hnsw, metadata")
    parser.add_argument("--store", default="", help="also through the store on these databases: sqlite,postgres")
    parser.add_argument("--store-index", default="auto", help="the store collection's index type")
    parser.add_argument("--index-from", type=Path, default=None, help="a kept checkpoint dir to install in the store")
    parser.add_argument("--http", action="store_true", help="with --store sqlite: also through a real server")
    parser.add_argument("--out", default="bench/results/query.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.hnsw_n, args.queries, args.baseline_queries = 10_000, 5_000, 100, 10
    args.hnsw_n = min(args.hnsw_n, args.n)
    db_rows = args.db_rows if args.db_rows is not None else args.n
    faiss.omp_set_num_threads(args.threads)
    report: dict[str, Any] = {"machine": describe(), "n": args.n, "dim": args.dim, "threads": args.threads, "k": K}

    started = time.perf_counter()
    mixture = Clustered(args.n, args.dim)
    vectors = generate(mixture, args.n, seed=1)
    queries = mixture.sample(np.random.default_rng(2), args.queries, extra_noise=0.05)
    truth = exact_topk(vectors, queries)
    report["generate_s"] = round(time.perf_counter() - started, 1)
    rows: list[dict[str, Any]] = []
    base = numpy_baseline(vectors, queries[: args.baseline_queries], truth)
    base["bytes_per_vector"] = args.dim * 4
    rows.append(base)
    print(f"numpy: p50 {base['p50_ms']} ms", flush=True)

    skip = set(args.skip.split(","))
    if "flat" not in skip:
        _flat(args, vectors, queries, truth, rows)

    skip = set(args.skip.split(","))
    ivf_hits = [] if "ivfpq" in skip else _ivfpq(args, vectors, queries, truth, rows, report)
    if "hnsw" not in skip:
        _hnsw(args, vectors, queries, truth, rows)
    if "metadata" not in skip:
        workdir = Path(tempfile.mkdtemp(prefix="pe-query-db-"))
        try:
            report["metadata"] = metadata_fetch(vectors, db_rows, ivf_hits, queries[:50], workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.store:
        from bench.store_query import run as run_store

        report["store"] = run_store(args, vectors, queries, truth)
    report["rows"] = rows
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    _print(report, base["p50_ms"])
    return 0


def _flat(args: argparse.Namespace, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, rows: list) -> None:
    flat_spec = IndexSpec("flat")
    flat, built = build_timed(flat_spec, vectors, plan_build(flat_spec, args.n, args.dim, args.memory_budget), 0)
    found, ms = timed_queries(queries[: args.baseline_queries], lambda q, flat=flat: flat.search(q, K)[1])
    rows.append(
        {
            "method": "flat (FAISS exact)",
            "params": "",
            "recall": recall(found, truth),
            **dict(zip(("p50_ms", "p95_ms"), pct(ms))),
            **built,
            "bytes_per_vector": round(index_file_bytes(flat, args.keep, "flat") / args.n, 1),
        }
    )
    del flat
    gc.collect()
    print(f"flat: {rows[-1]}", flush=True)


def _ivfpq(
    args: argparse.Namespace, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, rows: list, report: dict
) -> list[np.ndarray]:
    extra = parse_index_params("ivfpq", dict(kv.split("=", 1) for kv in args.ivf_params.split(",") if kv))
    spec = choose_spec("ivfpq", args.n, args.dim, args.memory_budget, extra)
    plan = plan_build(spec, args.n, args.dim, args.memory_budget)
    report["ivfpq"] = {"spec": spec.params, "plan": plan.__dict__}
    if args.reuse:
        ivf, built = ckpt.load(args.reuse / "ivfpq")[0], {"reused": str(args.reuse)}
        size = (args.reuse / "ivfpq" / ckpt.read_pointer(args.reuse / "ivfpq").file).stat().st_size
    else:
        ivf, built = build_timed(spec, vectors, plan, 3)
        size = index_file_bytes(ivf, args.keep, "ivfpq")
    nprobes = [int(v) for v in args.nprobes.split(",")]
    reranks = tuple(int(v) for v in args.reranks.split(","))
    ivf_rows = sweep(ivf, vectors, queries, truth, "nprobe", nprobes, reranks)
    for row in ivf_rows:
        row.update(built, bytes_per_vector=round(size / args.n, 1))
    rows += ivf_rows
    print(f"ivfpq: {built} {[(r['params'], r['recall'], r['p50_ms']) for r in ivf_rows]}", flush=True)
    default_nprobe = spec.params["nprobe"]
    return [ivf.search(q, K * spec.params["rerank"], nprobe=default_nprobe)[1] for q in queries[:50]]


def _hnsw(args: argparse.Namespace, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, rows: list) -> None:
    sub = vectors[: args.hnsw_n]
    sub_truth = exact_topk(sub, queries) if args.hnsw_n < args.n else truth
    hspec = choose_spec("hnsw", args.hnsw_n, args.dim, args.memory_budget)
    hnsw, built = build_timed(hspec, sub, plan_build(hspec, args.hnsw_n, args.dim, args.memory_budget), 0)
    size = index_file_bytes(hnsw, args.keep, "hnsw")
    hnsw_rows = sweep(hnsw, sub, queries, sub_truth, "ef_search", [16, 32, 64, 128, 256])
    for row in hnsw_rows:
        row.update(built, bytes_per_vector=round(size / args.hnsw_n, 1), n=args.hnsw_n)
    rows += hnsw_rows
    print(f"hnsw: {built} {[(r['params'], r['recall'], r['p50_ms']) for r in hnsw_rows]}", flush=True)
    del hnsw
    gc.collect()


def _print(report: dict[str, Any], base_ms: float) -> None:
    print(f"\n{report['n']} x {report['dim']}-d, {report['threads']} threads, recall@{K} vs exact, single-query times")
    print(
        f"{'method':<20}{'params':<22}{'n':>9}{'recall':>8}{'p50 ms':>9}{'p95 ms':>9}{'vs numpy':>10}{'build s':>9}{'B/vec':>8}"
    )
    for r in report["rows"]:
        print(
            f"{r['method']:<20}{r['params']:<22}{r.get('n', report['n']):>9}{r['recall']:>8.3f}{r['p50_ms']:>9}{r['p95_ms']:>9}"
            f"{'x%.1f' % (base_ms / r['p50_ms']):>10}{r.get('build_s', ''):>9}{r['bytes_per_vector']:>8}"
        )
    if "metadata" not in report:
        return
    m = report["metadata"]
    print(f"\nmetadata, SQLite with {m['rows']} images ({m['db_mb']} MB, filled in {m['fill_s']} s):")
    print(
        f"  100 results in one call (VectorStore.images): p50 {m['fetch100_p50_ms']} ms, p95 {m['fetch100_p95_ms']} ms"
    )
    print(
        f"  100 results one at a time (baseline):         p50 {m['one_by_one_p50_ms']} ms, p95 {m['one_by_one_p95_ms']} ms "
        f"(x{m['one_by_one_p50_ms'] / m['fetch100_p50_ms']:.1f})"
    )
    print(f"  IVF-PQ exact re-rank from SQLite:              p50 {m['ivfpq_rerank_sqlite_p50_ms']} ms")


if __name__ == "__main__":
    raise SystemExit(main())
