"""`pe-search search`: the same SearchService as `POST /search`, with its filters and limits."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.cli.args import non_negative_int, positive_int, print_json, unit_interval
from app.errors import InvalidInputError
from app.settings import Settings

if TYPE_CHECKING:
    from app.media.image_ref import ImageRef
    from app.services.query_parts import QueryPart
    from app.services.search import ScoredImage, SearchQuery
    from index.filters import SearchFilter


def _filter_values(raw: str) -> list[Any]:
    """What `KEY=VALUE` matches: the text, and the number or boolean it spells, since a CSV manifest
    stores `2021` as text and a JSONL one as a number (typed filters tell the two apart)."""
    try:
        typed = json.loads(raw)
    except ValueError:
        return [raw]
    return [raw, typed] if isinstance(typed, (int, float, bool)) else [raw]


def metadata_filter(pairs: list[str]) -> dict[str, Any]:
    """Repeated `--filter KEY=VALUE`: every key must match; a key given twice matches either value."""
    out: dict[str, list[Any]] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"--filter takes KEY=VALUE, got {pair!r}")
        out.setdefault(key, []).extend(_filter_values(raw))
    return dict(out)


def _image_ref(path: str) -> ImageRef:
    from app.media.image_ref import ImageRef

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read the image {path}: {exc.strerror or exc}") from exc
    return ImageRef("base64", base64.b64encode(data).decode("ascii"))


def read_vector(source: str) -> tuple[float, ...]:
    """A query vector from a .npy file, or a JSON array in a file or on stdin (`-`)."""
    import numpy as np

    try:
        if source.endswith(".npy"):
            values = np.load(source, allow_pickle=False)
        else:
            text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
            values = np.asarray(json.loads(text), dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"--vector {source}: not a .npy file or a JSON array of numbers ({exc})") from exc
    return tuple(float(v) for v in np.ravel(values))


def query_parts(args: argparse.Namespace) -> tuple[QueryPart, ...]:
    """Every positive and negative term the flags give, in order: text, --and, --image, --id, then the --not ones."""
    from app.services.query_parts import QueryPart

    parts: list[QueryPart] = []
    if args.text:
        parts.append(QueryPart(text=" ".join(args.text)))
    parts += [QueryPart(text=t) for t in args.also]
    parts += [QueryPart(image=_image_ref(p)) for p in args.image]
    parts += [QueryPart(image_id=i) for i in args.id]
    if args.vector:
        parts.append(QueryPart(vector=read_vector(args.vector)))
    parts += [QueryPart(weight=-1.0, text=t) for t in args.exclude]
    parts += [QueryPart(weight=-1.0, image=_image_ref(p)) for p in args.not_image]
    parts += [QueryPart(weight=-1.0, image_id=i) for i in args.not_id]
    return tuple(parts)


def _filter(args: argparse.Namespace) -> SearchFilter | None:
    from index.filters import SearchFilter

    if not (args.filter or args.uri_prefix):
        return None
    return SearchFilter(metadata=metadata_filter(args.filter), uri_prefix=args.uri_prefix)


def _query(args: argparse.Namespace) -> SearchQuery:
    from app.services.search import SearchQuery

    return SearchQuery(
        collection=args.collection,
        parts=query_parts(args),
        top_k=args.k,
        offset=args.offset,
        order=args.order,
        candidates=args.candidates,
        search_filter=_filter(args),
        min_score=args.min_score,
    )


async def _search(settings: Settings, query: SearchQuery) -> list[ScoredImage]:
    from app.services.wiring import build_services

    services = build_services(settings)
    try:
        page = await services.search.search(query)
    finally:
        # A search writes nothing: the index it caught up is left for the writer to checkpoint.
        await services.aclose(checkpoint=False)
    return page.results


def _wire_part(part: QueryPart) -> dict[str, Any]:
    if part.image is not None:
        return {"image": {"type": part.image.kind, "value": part.image.value}, "weight": part.weight}
    field = next(k for k in ("text", "image_id", "vector") if getattr(part, k) is not None)
    value = getattr(part, field)
    return {field: list(value) if field == "vector" else value, "weight": part.weight}


def _remote_rows(args: argparse.Namespace, query: SearchQuery, server: str) -> list[dict[str, Any]]:
    """The same search sent to a running server: no model loads here, the server's is warm already."""
    import os

    from app.client.http import PESearchClient

    search_filter: dict[str, Any] = {}
    if args.filter:
        search_filter["metadata"] = metadata_filter(args.filter)
    if args.uri_prefix:
        search_filter["uri_prefix"] = args.uri_prefix
    with PESearchClient(server, api_key=os.environ.get("PE_SEARCH_API_KEY")) as client:
        page = client.search(
            parts=[_wire_part(p) for p in query.parts],
            top_k=args.k,
            offset=args.offset,
            order=args.order,
            candidates=args.candidates,
            collection=args.collection,
            filter=search_filter or None,
            min_score=args.min_score,
        )
    return [{"id": h.id, "score": round(h.score, 4), "uri": h.uri, "metadata": h.metadata} for h in page.hits]


def cmd_search(args: argparse.Namespace, settings: Settings) -> int:
    query = _query(args)
    if not query.parts:
        print(
            "pe-search: give TEXT, --image PATH, --id N or --vector FILE (and any --and / --not terms)", file=sys.stderr
        )
        return 2
    server = args.server or settings.url
    if server:
        rows = _remote_rows(args, query, server)
    else:
        hits = asyncio.run(_search(settings, query))
        rows = [
            {"id": h.image.id, "score": round(h.score, 4), "uri": h.image.uri, "metadata": h.image.meta} for h in hits
        ]
    if args.json:
        print_json(rows)
    else:
        for row in rows:
            print(f"{row['score']:.4f}  {row['id']:>8}  {row['uri']}")
    return 0


def add_search_command(sub: argparse._SubParsersAction, model_opts: argparse.ArgumentParser) -> None:
    search = sub.add_parser("search", parents=[model_opts], help="search a collection by text, image or id")
    search.add_argument("text", nargs="*")
    search.add_argument("--and", dest="also", action="append", default=[], metavar="TEXT", help="another text to match")
    search.add_argument(
        "--not", dest="exclude", action="append", default=[], metavar="TEXT", help="a text to move away from"
    )
    search.add_argument("--image", action="append", default=[], metavar="PATH", help="an image file: find similar ones")
    search.add_argument("--not-image", action="append", default=[], metavar="PATH", help="an image to move away from")
    search.add_argument("--id", type=int, action="append", default=[], help="a stored image's id: find similar ones")
    search.add_argument("--not-id", type=int, action="append", default=[], metavar="ID", help="a stored image to avoid")
    search.add_argument(
        "--vector", metavar="FILE", help="a query embedding: a .npy file, or a JSON array (- for stdin)"
    )
    search.add_argument("-k", type=positive_int, default=10, help="results (at most PE_SEARCH_MAX_TOP_K)")
    search.add_argument("--offset", type=non_negative_int, default=0, help="skip this many results (the next page)")
    search.add_argument(
        "--order",
        choices=["score", "created_at", "-created_at"],
        default="score",
        help="created_at / -created_at: the best --candidates matches, oldest or newest first",
    )
    search.add_argument("--candidates", type=positive_int, help="matches a date order sorts (default 200)")
    search.add_argument("--collection", default="default")
    search.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only images whose metadata KEY is VALUE (as text, or the number or boolean it spells); "
        "repeat a key for any of several values",
    )
    search.add_argument("--uri-prefix", help="only images whose uri starts with this")
    search.add_argument("--min-score", type=unit_interval, help="only results with at least this cosine")
    search.add_argument(
        "--server",
        metavar="URL",
        help="send the query to a running pe-search server (default: PE_SEARCH_URL) instead of loading a model here; "
        "PE_SEARCH_API_KEY is sent as its key",
    )
    search.add_argument("--json", action="store_true")
    search.set_defaults(func=cmd_search)
