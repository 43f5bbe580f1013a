"""Building an index too large to train in one pass of RAM: train on a sample, add in chunks.

An IVF-PQ build never holds the collection's float vectors at once: the coarse and product
quantizers are trained on a random sample sized by the memory budget, then vectors are
streamed from the database in chunks (`index.vector_rows`) and only their codes (m bytes + an 8-byte id each) stay.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from index.ann.vector_index import HNSW_DEFAULTS, IVF_POINTS_PER_LIST, IndexSpec, VectorIndex, hnsw_bytes_per_vector

log = logging.getLogger(__name__)
# Training points per centroid we ask for when the budget allows; IVF_POINTS_PER_LIST is
# the floor below which k-means quality drops (FAISS warns there too).
TRAIN_POINTS_PER_LIST = 64
# IVF-PQ training holds the sample and its residuals to the coarse centroids: two copies.
TRAIN_COPIES = 2
ID_BYTES = 8
# 20k rows of 1024-d is 80 MB: larger chunks add no speed (FAISS adds vector by vector) and cost RAM.
MIN_CHUNK_ROWS, MAX_CHUNK_ROWS = 1_000, 20_000


@dataclass(frozen=True)
class BuildPlan:
    """How a build fits a memory budget: rows to train on and to add at once, and the bytes they take."""

    sample_rows: int
    chunk_rows: int
    index_bytes: int
    peak_bytes: int
    within_budget: bool


def index_bytes(spec: IndexSpec, n: int, dim: int) -> int:
    """Resident size of a finished index of n vectors (FAISS structures, not Python objects)."""
    if spec.kind == "ivfpq":
        code = spec.params["m"] * spec.params["nbits"] // 8
        centroids = spec.params["nlist"] * dim * 4 + 2 ** spec.params["nbits"] * dim * 4
        return n * (code + ID_BYTES) + centroids
    if spec.kind == "hnsw":
        return n * (hnsw_bytes_per_vector(dim, spec.params.get("M", HNSW_DEFAULTS["M"])) + ID_BYTES)
    return n * (dim * 4 + ID_BYTES)


def sample_bounds(spec: IndexSpec) -> tuple[int, int]:
    """(fewest, most) training rows worth using for an IVF-PQ spec; (0, 0) for untrained kinds."""
    if spec.kind != "ivfpq":
        return 0, 0
    centroids = max(spec.params["nlist"], 2 ** spec.params["nbits"])
    return centroids * IVF_POINTS_PER_LIST, centroids * TRAIN_POINTS_PER_LIST


def plan_build(spec: IndexSpec, n: int, dim: int, memory_budget: int) -> BuildPlan:
    """The largest useful training sample and add chunk that keep the build's peak within the budget.

    Peak = finished index + training copies of the sample + one chunk of float vectors. When even
    the fewest useful training rows do not fit, the plan uses them anyway and says so.
    """
    row = dim * 4
    final = index_bytes(spec, n, dim)
    chunk = int(min(MAX_CHUNK_ROWS, max(MIN_CHUNK_ROWS, memory_budget // 16 // row)))
    chunk = max(1, min(chunk, n)) if n else MIN_CHUNK_ROWS
    fewest, most = sample_bounds(spec)
    sample = 0
    if most:
        affordable = max(0, memory_budget - final - chunk * row) // (TRAIN_COPIES * row)
        sample = min(n, most, max(fewest, affordable))
    peak = final + sample * TRAIN_COPIES * row + chunk * row
    return BuildPlan(sample, chunk, final, peak, peak <= memory_budget)


def build_index(
    spec: IndexSpec,
    dim: int,
    *,
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    sample: Callable[[int], np.ndarray] | None = None,
    plan: BuildPlan,
) -> VectorIndex:
    """A new index trained on `sample(plan.sample_rows)` (IVF-PQ only) and filled from `chunks` of (ids, vectors)."""
    train = None
    if spec.kind == "ivfpq":
        if sample is None:
            raise ValueError("an IVF-PQ build needs a training sample")
        if not plan.within_budget:
            log.warning("An IVF-PQ build of this size needs about %d MB, over the memory budget", plan.peak_bytes >> 20)
        train = sample(plan.sample_rows)[: plan.sample_rows]
    index = VectorIndex.build(spec, dim, train)
    del train
    for ids, vectors in chunks:
        index.add(ids, vectors)
    return index
