"""FAISS indexes keyed by database ids (never row positions), and their choice by size.

Every index is over L2-normalised vectors with inner product, so scores are cosines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import faiss
import numpy as np

INDEX_TYPES = ("flat", "hnsw", "ivfpq")
# Kinds whose codes are approximate: their candidates are re-scored from exact vectors.
RERANKED_KINDS = ("ivfpq",)
# Exact search is the default while it stays fast (about 10 ms a query at 100k x 1024-d on 2 cores).
FLAT_MAX_VECTORS = 100_000
HNSW_DEFAULTS = {"M": 32, "ef_construction": 80, "ef_search": 128}
# rerank: the store re-scores k x rerank PQ candidates exactly. 64-byte codes of 1024-d vectors
# cap recall@10 near 0.94 at x4 whatever nprobe; x10 gives 0.99 (docs/BENCHMARKS.md, bench query).
IVFPQ_DEFAULTS = {"nprobe": 32, "nbits": 8, "rerank": 10}
# k-means wants about this many training points per centroid.
IVF_POINTS_PER_LIST = 39


# IVF-PQ options: "coarse": "hnsw" finds the nprobe nearest lists by a graph instead of scanning every
# centroid (what makes a large nlist affordable); "opq": true rotates vectors before PQ so each
# sub-quantizer gets a balanced share of the variance (better codes, the same bytes).
COARSE_HNSW_M = 32
COARSE_EF_MIN = 64
# FAISS trains OPQ for 50 rounds by default; on 1024-d vectors each round costs seconds on 2 cores
# and the rotation's gain flattens after about 20.
OPQ_ITERATIONS = 20


def _ivfpq(params: dict[str, Any], dim: int) -> faiss.Index:
    nlist, m, nbits = params["nlist"], params["m"], params["nbits"]
    if params.get("coarse", "flat") == "hnsw":
        coarse: faiss.Index = faiss.IndexHNSWFlat(dim, COARSE_HNSW_M, faiss.METRIC_INNER_PRODUCT)
    else:
        coarse = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFPQ(coarse, dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
    if not params.get("opq"):
        return ivf
    rotation = faiss.OPQMatrix(dim, m)
    rotation.niter = OPQ_ITERATIONS
    # Search parameters for the IVF pass straight through the rotation (checked in the tests).
    return faiss.IndexPreTransform(rotation, ivf)


@dataclass(frozen=True)
class IndexSpec:
    kind: str
    params: dict[str, Any] = field(default_factory=dict)


def hnsw_bytes_per_vector(dim: int, m: int = HNSW_DEFAULTS["M"]) -> int:
    # Flat storage plus about 2*M neighbour links of 4 bytes at level 0 (upper levels add ~1/M more).
    return dim * 4 + int(2 * m * 4 * 1.1)


def ivfpq_params(n: int, dim: int) -> dict[str, Any]:
    nlist = max(1, min(65_536, int(4 * math.sqrt(max(n, 1)))))
    nlist = min(nlist, max(1, n // IVF_POINTS_PER_LIST))
    # Sub-vectors of at least 4 dims (16 for 1024-d: 64 bytes a vector).
    m = next(m for m in (64, 48, 32, 16, 8, 4, 2, 1) if dim % m == 0 and dim // m >= 4 or m == 1)
    # 2**nbits centroids per sub-quantizer also want enough training points.
    nbits = max(4, min(IVFPQ_DEFAULTS["nbits"], int(math.log2(max(n, 16) / IVF_POINTS_PER_LIST))))
    return {**IVFPQ_DEFAULTS, "nlist": nlist, "m": m, "nbits": nbits}


# Parameters a user may set per collection (`pe-search reindex --param KEY=VALUE`), by kind.
_INT_PARAMS = {
    "hnsw": ("M", "ef_construction", "ef_search"),
    "ivfpq": ("nlist", "m", "nbits", "nprobe", "rerank"),
}
_CHOICE_PARAMS: dict[str, dict[str, tuple[str, ...]]] = {"ivfpq": {"coarse": ("flat", "hnsw")}}
_BOOL_PARAMS = {"ivfpq": ("opq",)}


def _known_params(kind: str) -> list[str]:
    return [*_INT_PARAMS.get(kind, ()), *_CHOICE_PARAMS.get(kind, {}), *_BOOL_PARAMS.get(kind, ())]


def _known(kind: str, key: str) -> bool:
    return key in _known_params(kind)


def parse_index_params(kind: str, raw: dict[str, str]) -> dict[str, Any]:
    """Typed index parameters from KEY=VALUE strings; ValueError naming the key for anything else.

    For `auto` the parameters of every kind are accepted: each applies if its kind is chosen.
    """
    if kind == "auto":
        out_all: dict[str, Any] = {}
        for key, value in raw.items():
            owner = next((k for k in ("hnsw", "ivfpq") if _known(k, key)), "ivfpq")
            out_all.update(parse_index_params(owner, {key: value}))
        return out_all
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _INT_PARAMS.get(kind, ()):
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"index parameter {key} must be a positive integer, not {value!r}")
            out[key] = int(value)
        elif key in _CHOICE_PARAMS.get(kind, {}):
            choices = _CHOICE_PARAMS[kind][key]
            if value not in choices:
                raise ValueError(f"index parameter {key} is one of {', '.join(choices)}, not {value!r}")
            out[key] = value
        elif key in _BOOL_PARAMS.get(kind, ()):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"index parameter {key} is true or false, not {value!r}")
            out[key] = value.lower() in ("true", "1")
        else:
            known = _known_params(kind)
            hint = f"; {kind} takes {', '.join(known)}" if known else f"; a {kind} index takes none"
            raise ValueError(f"unknown index parameter {key!r}{hint}")
    return out


def choose_spec(
    requested: str, n: int, dim: int, memory_budget: int, params: dict[str, Any] | None = None
) -> IndexSpec:
    """The index a collection of n vectors gets: as asked, or by size and memory budget for auto."""
    params = dict(params or {})
    kind = requested
    if requested == "auto":
        if n <= FLAT_MAX_VECTORS:
            kind = "flat"
        elif n * hnsw_bytes_per_vector(dim) <= memory_budget:
            kind = "hnsw"
        else:
            kind = "ivfpq"
    if kind == "ivfpq" and n < IVF_POINTS_PER_LIST * 4:
        kind = "flat"  # too few vectors to train a quantizer; exact search is cheaper anyway
    if kind == "hnsw":
        return IndexSpec("hnsw", {**HNSW_DEFAULTS, **params})
    if kind == "ivfpq":
        return IndexSpec("ivfpq", {**ivfpq_params(n, dim), **params})
    if kind == "flat":
        return IndexSpec("flat", {})
    raise ValueError(f"unknown index type {requested!r}; use auto, {', '.join(INDEX_TYPES)}")


class VectorIndex:
    """One collection's FAISS index. HNSW cannot delete in place, so its deletions are
    hidden at search time until the next rebuild.

    An index read memory-mapped (`mapped` holds its open file) is copy-on-write: FAISS aborts
    the process on any write to mapped storage, so the first add or removal reads the file
    into owned memory first. The open handle keeps the file readable even after a newer
    checkpoint unlinks it.
    """

    def __init__(
        self,
        spec: IndexSpec,
        dim: int,
        index: faiss.Index,
        hidden: set[int] | None = None,
        mapped: BinaryIO | None = None,
    ) -> None:
        self.spec = spec
        self.dim = dim
        self.index = index
        self.hidden: set[int] = hidden or set()
        self.mapped = mapped

    @property
    def is_mapped(self) -> bool:
        return self.mapped is not None

    def _own(self) -> None:
        if self.mapped is None:
            return
        self.mapped.seek(0)
        # faiss's bundled stubs omit its Python-level wrappers; the ignores below are for those names.
        self.index = faiss.read_index(faiss.PyCallbackIOReader(self.mapped.read))  # type: ignore[attr-defined]
        self.mapped.close()
        self.mapped = None

    @classmethod
    def build(cls, spec: IndexSpec, dim: int, train: np.ndarray | None = None) -> VectorIndex:
        index: faiss.Index
        if spec.kind == "flat":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        elif spec.kind == "hnsw":
            hnsw = faiss.IndexHNSWFlat(dim, spec.params["M"], faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = spec.params["ef_construction"]
            index = faiss.IndexIDMap2(hnsw)
        else:
            if train is None or len(train) == 0:
                raise ValueError("an IVF-PQ index needs training vectors")
            index = _ivfpq(spec.params, dim)
            index.train(np.ascontiguousarray(train, dtype=np.float32))
        return cls(spec, dim, index)

    @property
    def count(self) -> int:
        return int(self.index.ntotal) - len(self.hidden)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self._own()
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return
        if self.spec.kind == "hnsw":
            self.hidden.update(int(i) for i in ids)
        else:
            self._own()
            self.index.remove_ids(ids)  # type: ignore[arg-type]  # the wrapper takes an id array

    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None, **knobs: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) for one query, best first; only ids in `allowed` when given."""
        if self.index.ntotal == 0 or k <= 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        # FAISS selectors hold raw pointers: `parts` keeps their id arrays alive during the call.
        selector, parts = self._selector(allowed)
        params = self._params(selector, knobs, parts)
        k = min(k, int(self.index.ntotal))
        # One query gains nothing from OpenMP threads (FAISS splits work by query), but an HNSW search
        # pays for waking them: x5 slower with 2 threads on 2 busy cores (docs/BENCHMARKS.md). The
        # setting is per calling thread, so concurrent searches and bulk adds elsewhere keep theirs.
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            scores, ids = self.index.search(
                np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32), k, params=params
            )
        finally:
            faiss.omp_set_num_threads(threads)
        del parts
        keep = ids[0] >= 0
        return scores[0][keep], ids[0][keep]

    def _selector(self, allowed: np.ndarray | None) -> tuple[faiss.IDSelector | None, list[object]]:
        parts: list[object] = []
        selector: faiss.IDSelector | None = None
        if allowed is not None:
            allowed = np.ascontiguousarray(allowed, dtype=np.int64)
            selector = faiss.IDSelectorBatch(allowed)
            parts += [allowed, selector]
        if self.hidden:
            hidden = np.fromiter(self.hidden, dtype=np.int64, count=len(self.hidden))
            batch = faiss.IDSelectorBatch(hidden)
            not_hidden = faiss.IDSelectorNot(batch)
            parts += [hidden, batch, not_hidden]
            selector = not_hidden if selector is None else faiss.IDSelectorAnd(selector, not_hidden)
            parts.append(selector)
        return selector, parts

    def _params(
        self, selector: faiss.IDSelector | None, knobs: dict[str, int], parts: list[object]
    ) -> faiss.SearchParameters | None:
        if self.spec.kind == "hnsw":
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
            params.efSearch = int(knobs.get("ef_search") or self.spec.params["ef_search"])
        elif self.spec.kind == "ivfpq":
            params = faiss.SearchParametersIVF()
            params.nprobe = int(knobs.get("nprobe") or self.spec.params["nprobe"])
            if self.spec.params.get("coarse") == "hnsw":
                # The coarse graph must look at least as deep as the lists it returns.
                coarse = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
                coarse.efSearch = max(COARSE_EF_MIN, 2 * params.nprobe)
                params.quantizer_params = coarse
                parts.append(coarse)  # the struct holds a raw pointer to it
        elif selector is None:
            return None
        else:
            params = faiss.SearchParameters()
        if selector is not None:
            params.sel = selector
        return params
