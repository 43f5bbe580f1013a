"""Near-duplicate images of a collection: pairs from the store's range search, grouped, with a keeper per group."""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator
from contextlib import closing, nullcontext
from dataclasses import dataclass, field

from app.errors import InvalidInputError
from app.runtime.executor import run_blocking
from index.dto import ImageRecord
from index.store import VectorStore

RESOLVE_RULES: tuple[str, ...] = ("keep-largest", "keep-oldest")
# Below this a "duplicate" is merely a similar image, and the pairs grow towards N squared.
MIN_THRESHOLD = 0.8
# A scan that finds more pairs than this stops: near-duplicates are rare, so the threshold is too low.
MAX_PAIRS = 2_000_000
_DELETE_CHUNK = 10_000


@dataclass(frozen=True)
class DuplicateGroup:
    images: list[ImageRecord]
    # The lowest and highest cosine among the pairs that joined the group.
    min_score: float
    max_score: float
    keep: int | None = None
    # What a resolve deletes: the members that are themselves within the threshold of the keeper. A
    # member joined only through a chain (A~B, B~C) may not be like the keeper at all, and stays.
    extras: tuple[int, ...] = ()


@dataclass(frozen=True)
class SharedContent:
    """One stored image whose identical bytes (one sha256) were ingested from several uris."""

    image: ImageRecord
    uris: list[str]


@dataclass
class DuplicateReport:
    collection: str
    threshold: float
    groups: list[DuplicateGroup]
    total_groups: int
    exact: list[SharedContent] = field(default_factory=list)


class _Groups:
    """Union-find over image ids, with each group's score range."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.scores: dict[int, tuple[float, float]] = {}

    def find(self, a: int) -> int:
        root = self.parent.setdefault(a, a)
        while root != self.parent[root]:
            root = self.parent[root]
        while a != root:  # path compression keeps later finds short
            self.parent[a], a = root, self.parent[a]
        return root

    def join(self, a: int, b: int, score: float) -> None:
        ra, rb = self.find(a), self.find(b)
        lo, hi = score, score
        for root in {ra, rb}:
            if root in self.scores:
                lo, hi = min(lo, self.scores[root][0]), max(hi, self.scores[root][1])
                del self.scores[root]
        self.parent[max(ra, rb)] = min(ra, rb)
        self.scores[min(ra, rb)] = (lo, hi)

    def members(self) -> list[tuple[list[int], tuple[float, float]]]:
        out: dict[int, list[int]] = {}
        for node in self.parent:
            out.setdefault(self.find(node), []).append(node)
        return [(sorted(ids), self.scores[root]) for root, ids in out.items()]


def group_pairs(pairs: Iterable[tuple[int, int, float]]) -> list[tuple[list[int], tuple[float, float]]]:
    """Connected components of the pairs, largest first (then by smallest id)."""
    groups = _Groups()
    for a, b, score in pairs:
        groups.join(a, b, score)
    return sorted(groups.members(), key=lambda g: (-len(g[0]), g[0][0]))


def collect_pairs(pairs: Iterator[tuple[int, int, float]]) -> dict[tuple[int, int], float]:
    out: dict[tuple[int, int], float] = {}
    # Closed here, in the thread that read it: a scan given up on must not leave its database session to the GC.
    with closing(pairs) if isinstance(pairs, Generator) else nullcontext():
        for a, b, score in pairs:
            out[(a, b)] = score
            if len(out) > MAX_PAIRS:
                raise InvalidInputError(
                    f"More than {MAX_PAIRS:,} near-duplicate pairs at this threshold: it matches similar images, "
                    "not duplicates. Raise it."
                )
    return out


def keeper(images: list[ImageRecord], rule: str | None) -> int | None:
    if rule is None:
        return None
    if rule == "keep-largest":
        return max(images, key=lambda i: (i.width * i.height, i.byte_size, -i.id)).id
    return min(images, key=lambda i: (i.created_at, i.id)).id


class DuplicateService:
    def __init__(self, *, store: VectorStore, default_threshold: float = 0.99) -> None:
        self.store = store
        self.default_threshold = default_threshold

    async def find(
        self, collection: str, *, threshold: float | None = None, limit: int = 100, resolve: str | None = None
    ) -> DuplicateReport:
        """Up to `limit` groups of images at or above the cosine threshold, and shared-content images."""
        threshold = self.default_threshold if threshold is None else threshold
        if not MIN_THRESHOLD <= threshold <= 1:
            raise InvalidInputError(f"threshold is a cosine from {MIN_THRESHOLD} to 1 (got {threshold}).")
        if resolve is not None and resolve not in RESOLVE_RULES:  # refused before the scan, not after
            raise InvalidInputError(f"resolve must be one of {', '.join(RESOLVE_RULES)} (got {resolve!r}).")
        info = await run_blocking(self.store.collection, collection)
        pairs = await run_blocking(lambda: collect_pairs(self.store.near_duplicates(info.id, threshold)))
        components = group_pairs((a, b, s) for (a, b), s in pairs.items())
        shown = components[:limit]
        records = await run_blocking(self.store.images, [i for ids, _ in shown for i in ids])
        groups = []
        for ids, (lo, hi) in shown:
            images = [records[i] for i in ids if i in records]
            if len(images) > 1:
                keep = keeper(images, resolve)
                extras = tuple(i.id for i in images if keep is not None and (min(i.id, keep), max(i.id, keep)) in pairs)
                groups.append(DuplicateGroup(images, lo, hi, keep, extras))
        shared = await run_blocking(self.store.shared_content, info.id, limit)
        owners = await run_blocking(self.store.images, [image_id for image_id, _ in shared])
        exact = [SharedContent(owners[i], uris) for i, uris in shared if i in owners]
        return DuplicateReport(info.name, threshold, groups, len(components), exact)

    async def delete_extras(self, report: DuplicateReport) -> int:
        """Delete each group's extras; returns how many were deleted.

        A group whose keeper is gone since the scan (another resolve, a delete) is left whole: deleting
        its extras then could leave none of the group.
        """
        keepers = [g.keep for g in report.groups if g.keep is not None and g.extras]
        alive = await run_blocking(self.store.images, keepers)
        doomed = [i for g in report.groups if g.keep in alive for i in g.extras]
        deleted = 0
        for start in range(0, len(doomed), _DELETE_CHUNK):
            deleted += await run_blocking(self.store.delete_images, doomed[start : start + _DELETE_CHUNK])
        return deleted
