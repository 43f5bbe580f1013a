"""Metadata filters on PostgreSQL without and with the GIN index on images.metadata (migration 0005).

A real PostgreSQL server on loopback (tests/support/pg.py) is filled through the store
(`bench.store_query.fill_store`: `crud.add_batch` in committed batches of 5,000, the index in place
as the migrations leave it) with N images whose metadata holds, besides the usual caption, tags
and camera, keys of known selectivity: `s1000` (N/1000 rows a value, 0.1%), `s100` (1%), `s10`
(10%), and `album`. For each vector index asked for (`flat`, `auto`: what the store builds at N),
the GIN index is dropped, then built again by the migration's own `create_index` (timed, and its
`pg_relation_size`), and in each state the same queries are timed through:

  ids     `crud.filtered_ids`, the statement a filtered search sends first (select the matching ids)
  search  `VectorStore.search(..., SearchFilter(metadata=...))`, top 10: catch-up check, the ids,
          the index search restricted to them (or, for an approximate index and at most
          EXACT_FILTER_LIMIT matches, exact scoring of their stored vectors), as a server runs it

The two states must return the same ids and the same hits; the plan of each case's first query
(EXPLAIN ANALYZE of the captured statement: its node, estimated and actual rows, server time) is
recorded with the timings. Vectors are bench/query.py's clustered 1024-d unit vectors.

    python -m bench metadata --n 200000 --indexes flat,auto
    python -m bench metadata --quick            # 20k rows, flat only, about a minute
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
from sqlalchemy import text

from bench.machine import describe
from bench.query import Clustered, generate
from bench.store_query import MODEL, fill_store
from tests.support.sql import load_migration, statements

K = 10
INDEX = "ix_images_metadata_gin"
WARM = 5


def selective_keys(i: int) -> dict[str, Any]:
    return {"s10": i % 10, "s100": i % 100, "s1000": i % 1000, "album": f"a{i % 37}"}


# Each case: a filter drawn at random, and the rows it matches out of n.
CASES: dict[str, tuple[Callable[[np.random.Generator], dict[str, Any]], Callable[[int], int]]] = {
    "0.1%": (lambda rng: {"s1000": int(rng.integers(1000))}, lambda n: n // 1000),
    "1%": (lambda rng: {"s100": int(rng.integers(100))}, lambda n: n // 100),
    "10%": (lambda rng: {"s10": int(rng.integers(10))}, lambda n: n // 10),
    "0.3% (list of 3 values)": (
        lambda rng: {"s1000": [int(v) for v in rng.choice(1000, 3, replace=False)]},
        lambda n: 3 * n // 1000,
    ),
}


def _pct(ms: list[float]) -> dict[str, float]:
    return {f"p{q}_ms": round(float(np.percentile(ms, q)), 3) for q in (50, 95)}


def _plan(store: Any, cid: int, search_filter: Any) -> dict[str, Any]:
    """EXPLAIN ANALYZE of the statement `crud.filtered_ids` sends for this filter."""
    from index import crud

    with statements(store.engine) as sent, store.sessions() as session:
        crud.filtered_ids(session, collection_id=cid, search_filter=search_filter)
    [(sql, parameters)] = [s for s in sent if s[0].lstrip().upper().startswith("SELECT")]
    with store.engine.connect() as connection:
        [[out]] = connection.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", parameters).all()
    top = out[0]["Plan"]
    nodes, todo = [], [top]
    while todo:
        node = todo.pop()
        nodes.append(node)
        todo.extend(node.get("Plans", []))
    return {
        "node": top["Node Type"],
        "uses_gin": any(n.get("Index Name") == INDEX for n in nodes),
        "estimated_rows": top["Plan Rows"],
        "actual_rows": top["Actual Rows"],
        "server_ms": round(out[0]["Execution Time"], 3),
    }


def measure(store: Any, cid: int, queries: np.ndarray, filters: dict[str, list[dict[str, Any]]], n: int) -> Any:
    """Per case: the ids query and the filtered search, timed; with what each returned, to compare states."""
    from index import crud
    from index.filters import SearchFilter

    out: dict[str, Any] = {}
    answers: dict[str, Any] = {}
    for case, drawn in filters.items():
        wanted = CASES[case][1](n)
        search_filters = [SearchFilter(metadata=f) for f in drawn]
        for f in search_filters[:WARM]:
            with store.sessions() as session:
                crud.filtered_ids(session, collection_id=cid, search_filter=f)
        ids_ms, counts, found_ids = [], set(), []
        for f in search_filters:
            started = time.perf_counter()
            with store.sessions() as session:
                ids = crud.filtered_ids(session, collection_id=cid, search_filter=f)
            ids_ms.append((time.perf_counter() - started) * 1000)
            counts.add(len(ids))
            found_ids.append(np.sort(ids).tobytes())
        assert counts == {wanted}, (case, counts, wanted)
        for q, f in zip(queries[:WARM], search_filters[:WARM], strict=True):
            store.search(cid, q, K, f)
        search_ms, hits = [], []
        for q, f in zip(queries, search_filters, strict=True):
            started = time.perf_counter()
            found = store.search(cid, q, K, f)
            search_ms.append((time.perf_counter() - started) * 1000)
            hits.append([h.id for h in found])
        assert all(len(h) == K for h in hits), case
        out[case] = {
            "matches": wanted,
            "ids": _pct(ids_ms),
            "search": _pct(search_ms),
            "plan": _plan(store, cid, search_filters[0]),
        }
        answers[case] = (found_ids, hits)
        print(f"  {case}: {json.dumps(out[case])}", flush=True)
    return out, answers


def _gin_bytes(store: Any) -> int | None:
    with store.engine.connect() as connection:
        size = connection.execute(text("SELECT pg_relation_size(to_regclass(:name))"), {"name": INDEX}).scalar()
    return None if size is None else int(size)


def _sql(store: Any, *statements: str) -> None:
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        for statement in statements:
            connection.exec_driver_sql(statement)


def _ratios(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    return {
        case: {
            path: {q: round(before[case][path][q] / after[case][path][q], 2) for q in ("p50_ms", "p95_ms")}
            for path in ("ids", "search")
        }
        for case in before
    }


def run(args: argparse.Namespace, workdir: Path, url: str) -> dict[str, Any]:
    from index.db import create_db_engine
    from index.store import VectorStore

    mixture = Clustered(args.n, args.dim, seed=0)
    vectors = generate(mixture, args.n, seed=1)
    queries = mixture.sample(np.random.default_rng(2), args.queries, extra_noise=0.1)
    rng = np.random.default_rng(3)
    filters = {case: [draw(rng) for _ in range(args.queries)] for case, (draw, _) in CASES.items()}
    store = VectorStore(engine=create_db_engine(url), index_dir=workdir / "indexes").open()
    cid = store.create_collection("bench", model=MODEL, dim=args.dim, index_type="flat").id
    report: dict[str, Any] = {"fill_s_with_gin_maintained": fill_store(store, cid, vectors, meta=selective_keys)}
    del vectors
    _sql(store, "VACUUM ANALYZE images")  # what autovacuum gets to: the GIN pending list merged
    with store.engine.connect() as connection:
        report["postgres"] = connection.exec_driver_sql("SHOW server_version").scalar()
        report["images_table_bytes"] = int(connection.exec_driver_sql("SELECT pg_relation_size('images')").scalar_one())
    report["gin_bytes_after_fill"] = _gin_bytes(store)
    migration = load_migration("0005_postgres_metadata_gin.py")
    report["runs"] = []
    for kind in args.indexes.split(","):
        started = time.perf_counter()
        store.reindex("bench", index_type=kind)
        run_out: dict[str, Any] = {"index_type": kind, "vector_index_build_s": round(time.perf_counter() - started, 1)}
        run_out["vector_index"] = store.live.synced(cid).index.spec.kind
        print(f"{kind}: {run_out}", flush=True)
        _sql(store, f"DROP INDEX IF EXISTS {INDEX}", "ANALYZE images")
        print(" without the GIN index", flush=True)
        run_out["without_gin"], before = measure(store, cid, queries, filters, args.n)
        started = time.perf_counter()
        with store.engine.begin() as connection:
            migration.create_index(connection)
        run_out["gin_build_s"] = round(time.perf_counter() - started, 2)
        run_out["gin_bytes"] = _gin_bytes(store)
        _sql(store, "ANALYZE images")
        print(f" with the GIN index (built in {run_out['gin_build_s']} s, {run_out['gin_bytes']} bytes)", flush=True)
        run_out["with_gin"], after = measure(store, cid, queries, filters, args.n)
        run_out["same_ids_and_hits"] = before == after
        assert before == after, "the filtered results differ with the index"
        run_out["speedup"] = _ratios(run_out["without_gin"], run_out["with_gin"])
        report["runs"].append(run_out)
    store.close(checkpoint=False)
    store.engine.dispose()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench metadata", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="images (a multiple of 1000)")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=100, help="timed queries per case")
    parser.add_argument("--indexes", default="flat,auto", help="comma-separated vector index types")
    parser.add_argument("--quick", action="store_true", help="20k rows, flat only")
    parser.add_argument("--out", default="bench/results/metadata_filter.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.indexes = 20_000, "flat"
    assert args.n % 1000 == 0, "--n: a multiple of 1000, so every value of s1000 matches as many rows"
    from tests.support import pg

    report: dict[str, Any] = {
        "machine": describe(),
        "n": args.n,
        "dim": args.dim,
        "queries": args.queries,
        "load_average_start": os.getloadavg(),
    }
    workdir = Path(tempfile.mkdtemp(prefix="pe-metadata-"))
    server = pg.new_server().start()
    started = time.perf_counter()
    try:
        report.update(run(args, workdir, server.url(server.create_database())))
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report["total_s"] = round(time.perf_counter() - started, 1)
    report["load_average_end"] = os.getloadavg()
    print(json.dumps(report, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
