"""The client's search and near-duplicate methods, mixed into `PESearchClient`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import requests

from app.client.models import (
    DuplicateGroup,
    DuplicateReport,
    ImageInput,
    ImageRecord,
    SearchHit,
    SearchPage,
    SharedContent,
)
from app.client.wire import image_object, jsonable

# A query term: a text, or a mapping with one of text / image (path, bytes or URL) / image_id / vector,
# and for `parts` a weight.
PartInput = str | Mapping[str, Any]
Order = Literal["score", "created_at", "-created_at"]


def _part(part: PartInput) -> Any:
    if isinstance(part, str):
        return part
    out = dict(part)
    if "image" in out and not isinstance(out["image"], Mapping):
        out["image"] = image_object(out["image"])
    if "vector" in out:
        out["vector"] = np.asarray(out["vector"], dtype=np.float64).ravel().tolist()
    return out


class SearchMethods:
    """Needs the client's `_json`, `_hit` and `_record`."""

    def _json(self, method: str, route: str, **kwargs: Any) -> Any:
        raise NotImplementedError

    def _hit(self, raw: dict[str, Any]) -> SearchHit:
        raise NotImplementedError

    def _record(self, raw: dict[str, Any]) -> ImageRecord:
        raise NotImplementedError

    def search(
        self,
        text: str | None = None,
        *,
        image: ImageInput | None = None,
        image_id: int | None = None,
        vector: Sequence[float] | np.ndarray | None = None,
        positive: Sequence[PartInput] = (),
        negative: Sequence[PartInput] = (),
        parts: Sequence[Mapping[str, Any]] = (),
        top_k: int = 10,
        offset: int = 0,
        order: Order = "score",
        candidates: int | None = None,
        cursor: str | None = None,
        collection: str | None = None,
        filter: Mapping[str, Any] | None = None,
        min_score: float | None = None,
    ) -> SearchPage:
        """One page of results for any query: the terms are summed (negative ones subtracted), normalised.

        `search("a dog", positive=["on a beach"], negative=["people"])`; `search(cursor=page.next_cursor)`
        for the next page without re-encoding.
        """
        body: dict[str, Any] = {"top_k": top_k, "offset": offset, "order": order}
        optional = {
            "text": text,
            "image": image_object(image) if image is not None else None,
            "image_id": image_id,
            "vector": np.asarray(vector, dtype=np.float64).ravel().tolist() if vector is not None else None,
            "candidates": candidates,
            "cursor": cursor,
            "collection": collection,
            "filter": jsonable(filter) if filter is not None else None,
            "min_score": min_score,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        for name, items in (("positive", positive), ("negative", negative), ("parts", parts)):
            if items:
                body[name] = [_part(p) for p in items]
        raw = self._json("POST", "/search", json=body)
        return SearchPage(
            hits=[self._hit(hit) for hit in raw["results"]],
            collection=raw["collection"],
            offset=raw["offset"],
            next_cursor=raw.get("next_cursor"),
        )

    def search_pages(self, text: str | None = None, **query: Any) -> Iterator[SearchPage]:
        """Every page of a search, following the cursors (same arguments as `search`)."""
        page = self.search(text, **query)
        yield page
        while page.next_cursor is not None:
            page = self.search(cursor=page.next_cursor, top_k=query.get("top_k", 10))
            yield page

    def _simple(
        self,
        query: dict[str, Any],
        top_k: int,
        collection: str,
        filter: Mapping[str, Any] | None,
        min_score: float | None,
    ) -> list[SearchHit]:
        key = next(iter(query))
        page = self.search(**{key: query[key]}, top_k=top_k, collection=collection, filter=filter, min_score=min_score)
        return page.hits

    def search_text(
        self,
        text: str,
        top_k: int = 10,
        collection: str = "default",
        filter: Mapping[str, Any] | None = None,
        min_score: float | None = None,
    ) -> list[SearchHit]:
        """Images of `collection` best matching a text, best first.

        `filter` is the API's filter object, e.g. `{"metadata": {"label": ["dog", "cat"]}, "uri_prefix": "/srv"}`.
        """
        return self._simple({"text": text}, top_k, collection, filter, min_score)

    def search_image(
        self,
        image: ImageInput,
        top_k: int = 10,
        collection: str = "default",
        filter: Mapping[str, Any] | None = None,
        min_score: float | None = None,
    ) -> list[SearchHit]:
        """Images most similar to a query image (path, bytes, or URL the server fetches)."""
        return self._simple({"image": image}, top_k, collection, filter, min_score)

    def search_id(
        self,
        image_id: int,
        top_k: int = 10,
        collection: str = "default",
        filter: Mapping[str, Any] | None = None,
        min_score: float | None = None,
    ) -> list[SearchHit]:
        """Images most similar to a stored image (which is itself usually the first hit)."""
        return self._simple({"image_id": image_id}, top_k, collection, filter, min_score)

    def search_vector(
        self,
        vector: Sequence[float] | np.ndarray,
        top_k: int = 10,
        collection: str = "default",
        filter: Mapping[str, Any] | None = None,
        min_score: float | None = None,
    ) -> list[SearchHit]:
        """Images nearest a query embedding (e.g. from `embed_text`), of the collection's dimension."""
        return self._simple({"vector": vector}, top_k, collection, filter, min_score)

    def duplicates(
        self,
        collection: str = "default",
        threshold: float | None = None,
        limit: int = 100,
        resolve: Literal["keep-largest", "keep-oldest"] | None = None,
        delete: bool = False,
    ) -> DuplicateReport:
        """Groups of near-duplicate images; with `resolve` each names a keeper, and `delete` removes the rest."""
        params: dict[str, Any] = {"limit": limit}
        if threshold is not None:
            params["threshold"] = threshold
        if resolve is not None:
            params["resolve"] = resolve
        route = f"/collections/{requests.utils.quote(collection, safe='')}/duplicates"
        raw = self._json("POST" if delete else "GET", route + ("/resolve" if delete else ""), params=params)
        return DuplicateReport(
            collection=raw["collection"],
            threshold=raw["threshold"],
            groups=[
                DuplicateGroup(
                    images=[self._record(i) for i in g["images"]],
                    min_score=g["min_score"],
                    max_score=g["max_score"],
                    keep=g.get("keep"),
                    extras=g.get("extras", []),
                )
                for g in raw["groups"]
            ],
            total_groups=raw["total_groups"],
            exact=[SharedContent(self._record(e["image"]), e["uris"]) for e in raw["exact"]],
            deleted=raw.get("deleted", 0),
        )
