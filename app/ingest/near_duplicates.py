"""Ingest's near-duplicate screen: new images within the threshold of one already stored (or of an
earlier one in the same batch) are reported (`warn`) or left out (`skip`).

A skipped image is not recorded as a source, so a later run without the screen still adds it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from index.dto import CollectionInfo, NewImage
from index.store import VectorStore

log = logging.getLogger(__name__)

NearMode = Literal["warn", "skip"]


@dataclass(frozen=True)
class NearDuplicatePolicy:
    mode: NearMode = "warn"
    threshold: float = 0.99


@dataclass(frozen=True)
class NearDuplicate:
    uri: str
    # The stored image it is close to, or None when the match is an earlier image of the same batch.
    of_id: int | None
    of_uri: str | None
    score: float


def screen(
    store: VectorStore, info: CollectionInfo, rows: Sequence[NewImage], policy: NearDuplicatePolicy
) -> tuple[list[NewImage], list[NearDuplicate]]:
    """(rows to commit, near-duplicates found). Rows without a vector (content already stored) pass."""
    kept: list[NewImage] = []
    found: list[NearDuplicate] = []
    accepted: list[tuple[str, np.ndarray]] = []
    shas: set[str] = set()
    for row in rows:
        # Content stored already, or the same bytes as a row kept above: a source of that image, not a new one.
        if row.vector is None or row.sha256 in shas:
            kept.append(row)
            continue
        match = _closest(store, info, row.vector, accepted, policy.threshold)
        if match is None:
            kept.append(row)
            shas.add(row.sha256)
            accepted.append((row.uri, row.vector))
            continue
        found.append(NearDuplicate(row.uri, *match))
        log.warning("%s is a near-duplicate (cosine %.4f) of %s", row.uri, match[2], match[1] or f"image {match[0]}")
        if policy.mode == "warn":
            kept.append(row)
            shas.add(row.sha256)
            accepted.append((row.uri, row.vector))
    return kept, found


def _closest(
    store: VectorStore,
    info: CollectionInfo,
    vector: np.ndarray,
    accepted: list[tuple[str, np.ndarray]],
    threshold: float,
) -> tuple[int | None, str | None, float] | None:
    hits = store.search(info.id, vector, 1, min_score=threshold)
    if hits:
        return hits[0].id, None, hits[0].score
    for uri, other in accepted:
        score = float(np.dot(vector, other))
        if score >= threshold:
            return None, uri, score
    return None
