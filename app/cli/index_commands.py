"""`pe-search` commands over the image index: ingest, collections, stats, delete, reindex, db (search has its own)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from app.cli.args import print_json
from app.cli.ingest_command import add_ingest_command
from app.cli.search_command import add_search_command
from app.settings import Settings

if TYPE_CHECKING:
    # Imported where used, so `pe-search --help` and light commands do not pay for torch and FAISS.
    from app.model.encoder import PEEncoder
    from index.store import VectorStore


def _store(settings: Settings) -> VectorStore:
    from app.services.storage import open_store

    return open_store(settings)


def load_encoder(settings: Settings, model: str | None = None, towers: tuple[str, ...] = ()) -> PEEncoder:
    """The encoder with `towers` loaded; the others load on first use (an ingest with nothing new loads none)."""
    from app.runtime.encoders import build_encoders

    return build_encoders(settings).registry.get(model, towers=towers)


def cmd_collections(args: argparse.Namespace, settings: Settings) -> int:
    infos = _store(settings).collections()
    if args.json:
        print_json([i.__dict__ for i in infos])
        return 0
    print(f"{'name':<24}{'model':<18}{'dim':>5}{'images':>10}  index")
    for info in infos:
        print(f"{info.name:<24}{info.model:<18}{info.dim:>5}{info.count:>10}  {info.live_index} ({info.index_type})")
        if info.tuned:
            print(f"{'':<24}tuned: {_tuned_line(info.tuned)}")
    return 0


def _tuned_line(tuned: dict[str, Any]) -> str:
    params = ", ".join(f"{k} {v}" for k, v in tuned.get("params", {}).items())
    verdict = "met" if tuned.get("met") else "missed"
    return (
        f"{params}: recall@{tuned.get('k', 10)} {tuned.get('recall')} at p50 {tuned.get('p50_ms')} ms "
        f"(target {tuned.get('target_recall')} within {tuned.get('latency_budget_ms')} ms: {verdict})"
    )


def cmd_stats(args: argparse.Namespace, settings: Settings) -> int:
    store = _store(settings)
    stats = store.stats()
    stats["failures"] = {c["name"]: len(store.failures(c["id"])) for c in stats["collections"]}
    print_json(stats)
    return 0


def cmd_delete(args: argparse.Namespace, settings: Settings) -> int:
    store = _store(settings)
    deleted = store.delete_images(args.ids)
    store.close()
    print(f"{deleted} deleted" + (f", {len(args.ids) - deleted} not found" if deleted < len(args.ids) else ""))
    return 0 if deleted == len(args.ids) else 1


def cmd_reindex(args: argparse.Namespace, settings: Settings) -> int:
    store = _store(settings)
    current = store.collection(args.collection)
    if args.model and args.model != current.model:
        from app.media.uploads import UploadFiles
        from app.runtime.encoders import build_encoders
        from app.services.reembed import reembed_collection

        encoders = build_encoders(settings)
        result = reembed_collection(
            store=store,
            encoder=encoders.registry.get(args.model),
            uploads=UploadFiles(settings.uploads_dir),
            fetcher=encoders.fetcher,
            name=args.collection,
            batch_size=settings.ingest_batch,
            jpeg_draft=settings.ingest_jpeg_draft,
        )
        if result.failed:
            print(
                f"pe-search: {len(result.failed)} images could not be re-embedded; the collection is unchanged:",
                file=sys.stderr,
            )
            for image_id, reason in result.failed[:20]:
                print(f"  image {image_id}: {reason}", file=sys.stderr)
            return 1
    params = None
    if args.param:
        from index.ann.vector_index import parse_index_params

        kind = args.index_type or current.index_type
        try:
            params = parse_index_params(kind, dict(_key_value(p) for p in args.param))
        except ValueError as exc:
            print(f"pe-search: {exc}", file=sys.stderr)
            return 2
    info = store.reindex(args.collection, index_type=args.index_type, index_params=params)
    store.close()
    print(f"{info.name}: {info.count} vectors of {info.model} in a {info.live_index} index ({info.index_type})")
    if info.tuned:
        print(f"  tuned: {_tuned_line(info.tuned)}")
    return 0


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--param takes KEY=VALUE, not {text!r}")
    return key.strip(), value.strip()


def cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from index.db import create_db_engine, current_revision, upgrade_database

    engine = create_db_engine(settings.db_url)
    upgrade_database(engine)
    print(f"database at revision {current_revision(engine)}")
    return 0


def add_commands(sub: argparse._SubParsersAction, model_opts: argparse.ArgumentParser) -> None:
    add_ingest_command(sub, model_opts)
    add_search_command(sub, model_opts)

    collections = sub.add_parser("collections", help="list collections")
    collections.add_argument("--json", action="store_true")
    collections.set_defaults(func=cmd_collections)

    stats = sub.add_parser("stats", help="collections, sizes, index types, failures (JSON)")
    stats.set_defaults(func=cmd_stats)

    delete = sub.add_parser("delete", help="delete images by id")
    delete.add_argument("ids", nargs="+", type=int)
    delete.set_defaults(func=cmd_delete)

    reindex = sub.add_parser(
        "reindex",
        parents=[model_opts],
        help="rebuild a collection's index (another --index-type, or re-embed with --model)",
    )
    reindex.add_argument("--collection", default="default")
    reindex.add_argument("--index-type", choices=["auto", "flat", "hnsw", "ivfpq"])
    reindex.add_argument(
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="an index parameter (repeatable; replaces the collection's own): hnsw M, ef_construction, ef_search; "
        "ivfpq nlist, m, nbits, nprobe, rerank, coarse=flat|hnsw, opq=true|false",
    )
    reindex.set_defaults(func=cmd_reindex)

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser("upgrade", help="apply migrations")
    upgrade.set_defaults(func=cmd_db_upgrade)
