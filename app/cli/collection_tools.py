"""`pe-search duplicates`, `export` and `import`: whole-collection tools that need no model."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.cli.args import positive_int, print_json
from app.settings import Settings

if TYPE_CHECKING:
    from app.services.duplicates import DuplicateReport


def _report_rows(report: DuplicateReport) -> dict[str, Any]:
    def image(i: Any) -> dict[str, Any]:
        return {
            "id": i.id,
            "uri": i.uri,
            "width": i.width,
            "height": i.height,
            "byte_size": i.byte_size,
            "created_at": i.created_at.isoformat(),
        }

    return {
        "collection": report.collection,
        "threshold": report.threshold,
        "total_groups": report.total_groups,
        "groups": [
            {
                "min_score": g.min_score,
                "max_score": g.max_score,
                "keep": g.keep,
                "extras": list(g.extras),
                "images": [image(i) for i in g.images],
            }
            for g in report.groups
        ],
        "exact": [{"id": e.image.id, "uris": e.uris} for e in report.exact],
    }


def _print_report(report: DuplicateReport, deleting: bool) -> None:
    print(f"{report.total_groups} groups of near-duplicates (cosine >= {report.threshold}) in {report.collection!r}")
    for number, group in enumerate(report.groups, 1):
        print(f"group {number}: {len(group.images)} images, cosine {group.min_score:.4f}-{group.max_score:.4f}")
        for image in group.images:
            mark = "    "
            if image.id == group.keep:
                mark = "keep"
            elif image.id in group.extras:
                mark = "del " if deleting else "drop"
            print(f"  {mark} {image.id:>8}  {image.width}x{image.height}  {image.byte_size:>9} B  {image.uri}")
    for shared in report.exact:
        print(f"identical files, stored once as image {shared.image.id}: {', '.join(shared.uris)}")


def cmd_duplicates(args: argparse.Namespace, settings: Settings) -> int:
    from app.services.duplicates import DuplicateService
    from app.services.storage import open_store

    if args.delete and not args.resolve:
        print("pe-search: --delete needs --resolve keep-largest|keep-oldest (which image stays)", file=sys.stderr)
        return 2
    store = open_store(settings)
    service = DuplicateService(store=store, default_threshold=settings.duplicate_threshold)
    report = asyncio.run(
        service.find(args.collection, threshold=args.threshold, limit=args.limit, resolve=args.resolve)
    )
    deleted = asyncio.run(service.delete_extras(report)) if args.delete else 0
    store.close(checkpoint=args.delete)
    if args.json:
        print_json({**_report_rows(report), "deleted": deleted})
    else:
        _print_report(report, args.delete)
        extras = sum(len(g.extras) for g in report.groups)
        if args.delete:
            print(f"{deleted} images deleted")
        elif extras:
            print(f"dry run: {extras} images would be deleted; add --delete to delete them")
    return 0


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from app.services.exchange.writer import export_collection
    from app.services.storage import open_store

    store = open_store(settings)
    try:
        manifest = export_collection(
            store, collection=args.collection, out=Path(args.out), fmt=args.format, shard_rows=args.shard_rows
        )
    finally:
        store.close(checkpoint=False)
    print(
        f"{manifest.count} vectors of {manifest.model} ({manifest.dim}-d) from {manifest.collection!r} "
        f"in {len(manifest.shards)} shards at {args.out}"
    )
    return 0


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    from app.services.exchange.reader import import_collection
    from app.services.storage import open_store

    store = open_store(settings)
    try:
        result = import_collection(store, source=Path(args.source), collection=args.collection)
    finally:
        store.close()
    made = "created" if result.created_collection else "extended"
    print(f"{result.collection}: {made}; {result.added} added, {result.matched} already there")
    return 0


def add_collection_tools(sub: argparse._SubParsersAction) -> None:
    dup = sub.add_parser("duplicates", help="find near-duplicate images of a collection, and optionally resolve them")
    dup.add_argument("--collection", default="default")
    dup.add_argument(
        "--threshold", type=float, help="cosine at or above which images are near-duplicates (default 0.99)"
    )
    dup.add_argument("--limit", type=positive_int, default=100, help="groups shown, largest first")
    dup.add_argument("--resolve", choices=["keep-largest", "keep-oldest"], help="which image of each group stays")
    dup.add_argument("--delete", action="store_true", help="delete the others (without it: a dry run)")
    dup.add_argument("--json", action="store_true")
    dup.set_defaults(func=cmd_duplicates)

    export = sub.add_parser("export", help="write a collection's embeddings and metadata (npy + Parquet)")
    export.add_argument("--collection", default="default")
    export.add_argument("--out", required=True, help="a new or empty folder")
    export.add_argument(
        "--format",
        choices=["npy", "parquet"],
        default="npy",
        help="npy: img_emb/*.npy shards beside the metadata (clip-retrieval's layout); parquet: an embedding column",
    )
    export.add_argument("--shard-rows", type=positive_int, default=100_000, help="rows per shard")
    export.set_defaults(func=cmd_export)

    imp = sub.add_parser("import", help="create or extend a collection from an export, without re-embedding")
    imp.add_argument("source", help="the export's folder")
    imp.add_argument("--collection", help="the collection to fill (default: the exported one's name)")
    imp.set_defaults(func=cmd_import)
