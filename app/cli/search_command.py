"""`pe-search search`: the same SearchService as `POST /search`, with its filters and limits."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.cli.args import positive_int, print_json, unit_interval
from app.errors import InvalidInputError
from app.settings import Settings

if TYPE_CHECKING:
    from app.services.search import ScoredImage, SearchQuery


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


def _query(args: argparse.Namespace) -> SearchQuery | None:
    from app.media.image_ref import ImageRef
    from app.services.search import SearchQuery
    from index.filters import SearchFilter

    search_filter = None
    if args.filter or args.uri_prefix:
        search_filter = SearchFilter(metadata=metadata_filter(args.filter), uri_prefix=args.uri_prefix)
    common: dict[str, Any] = {
        "collection": args.collection,
        "top_k": args.k,
        "search_filter": search_filter,
        "min_score": args.min_score,
    }
    if args.id is not None:
        return SearchQuery(image_id=args.id, **common)
    if args.image:
        data = base64.b64encode(Path(args.image).read_bytes()).decode("ascii")
        return SearchQuery(image=ImageRef("base64", data), **common)
    if args.text:
        return SearchQuery(text=" ".join(args.text), **common)
    return None


async def _search(settings: Settings, query: SearchQuery) -> list[ScoredImage]:
    from app.services.wiring import build_services

    services = build_services(settings)
    try:
        hits, _ = await services.search.search(query)
    finally:
        # A search writes nothing: the index it caught up is left for the writer to checkpoint.
        await services.aclose(checkpoint=False)
    return hits


def _remote_rows(args: argparse.Namespace, server: str) -> list[dict[str, Any]]:
    """The same search sent to a running server: no model loads here, the server's is warm already."""
    import os

    from app.client.http import PESearchClient

    search_filter: dict[str, Any] = {}
    if args.filter:
        search_filter["metadata"] = metadata_filter(args.filter)
    if args.uri_prefix:
        search_filter["uri_prefix"] = args.uri_prefix
    common: dict[str, Any] = {
        "top_k": args.k,
        "collection": args.collection,
        "filter": search_filter or None,
        "min_score": args.min_score,
    }
    with PESearchClient(server, api_key=os.environ.get("PE_SEARCH_API_KEY")) as client:
        if args.id is not None:
            hits = client.search_id(args.id, **common)
        elif args.image:
            hits = client.search_image(Path(args.image), **common)
        else:
            hits = client.search_text(" ".join(args.text), **common)
    return [{"id": h.id, "score": round(h.score, 4), "uri": h.uri, "metadata": h.metadata} for h in hits]


def cmd_search(args: argparse.Namespace, settings: Settings) -> int:
    query = _query(args)
    if query is None:
        print("pe-search: give TEXT, --image PATH or --id N", file=sys.stderr)
        return 2
    server = args.server or settings.url
    if server:
        rows = _remote_rows(args, server)
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
    search.add_argument("--image", help="an image file: find similar ones")
    search.add_argument("--id", type=int, help="a stored image's id: find similar ones")
    search.add_argument("-k", type=positive_int, default=10, help="results (at most PE_SEARCH_MAX_TOP_K)")
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
