"""`pe-search` commands over the image index: ingest, collections, stats, delete, reindex, db (search has its own)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.cli.args import positive_float, positive_int, print_json, unit_interval
from app.cli.search_command import add_search_command
from app.settings import Settings

if TYPE_CHECKING:
    # Imported where used, so `pe-search --help` and light commands do not pay for torch and FAISS.
    from app.ingest.pipeline import Ingestor
    from app.ingest.ray_engine import RayIngestor
    from app.ingest.writer import IngestSummary
    from app.model.encoder import PEEncoder
    from index.store import VectorStore


def _store(settings: Settings) -> VectorStore:
    from app.services.storage import open_store

    return open_store(settings)


def load_encoder(settings: Settings, model: str | None = None, towers: tuple[str, ...] = ()) -> PEEncoder:
    """The encoder with `towers` loaded; the others load on first use (an ingest with nothing new loads none)."""
    from app.runtime.encoders import build_encoders

    return build_encoders(settings).registry.get(model, towers=towers)


def _ingestor(args: argparse.Namespace, settings: Settings, store: VectorStore) -> Ingestor | RayIngestor:
    """The local engine (threads and one model here) or the Ray engine (a pool of encoder actors)."""
    batch_size = args.batch_size or settings.ingest_batch
    near = None
    if args.near_duplicates:
        from app.ingest.near_duplicates import NearDuplicatePolicy

        near = NearDuplicatePolicy(args.near_duplicates, args.near_threshold or settings.duplicate_threshold)
    if args.engine == "ray":
        from app.ingest.ray_engine import RayIngestor, RayOptions
        from app.ingest.ray_setup import prepare_ray_process

        prepare_ray_process(local=args.ray_address is None)  # before anything imports Ray in this process
        options = RayOptions(
            address=args.ray_address,
            actors=args.ray_actors,
            cpus_per_actor=args.ray_cpus_per_actor,
            stall_timeout=args.ray_stall_timeout,
        )
        model = args.model or store.model_of(args.collection) or settings.model
        return RayIngestor(
            store=store, settings=settings, model=model, batch_size=batch_size, options=options, near_duplicates=near
        )
    from app.ingest.pipeline import Ingestor
    from app.runtime.encoders import build_encoders

    encoders = build_encoders(settings)
    encoder = encoders.registry.get(args.model or store.model_of(args.collection), towers=())
    return Ingestor.from_settings(
        settings, store=store, encoder=encoder, fetcher=encoders.fetcher, batch_size=batch_size, near_duplicates=near
    )


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from app.ingest.sources import count_folder, folder_items, manifest_items, url_list_items

    if sum(x is not None for x in (args.source, args.manifest, args.urls)) != 1:
        print("pe-search: give exactly one of SOURCE (a folder), --manifest FILE or --urls FILE", file=sys.stderr)
        return 2
    if args.source is not None:
        items, total = folder_items(Path(args.source)), count_folder(Path(args.source))
    elif args.manifest is not None:
        items, total = manifest_items(Path(args.manifest), args.column), None
    else:
        items, total = url_list_items(Path(args.urls)), None
    store = _store(settings)
    ingestor = _ingestor(args, settings, store)
    with tqdm(total=total, unit="img", disable=args.quiet or None, file=sys.stderr, dynamic_ncols=True) as bar:

        def progress(summary: IngestSummary) -> None:
            bar.update(summary.processed - bar.n)
            bar.set_postfix(added=summary.added, dup=summary.duplicates, failed=len(summary.failed), refresh=False)

        summary = ingestor.run(items, collection=args.collection, progress=progress)
    store.close()
    result = summary.to_dict()
    if args.json:
        print_json(result)
    else:
        print(
            f"{result['added']} added, {result['unchanged']} unchanged, {result['duplicates']} duplicates, "
            f"{result['failed']} failed in {result['seconds']:.1f} s ({result['images_per_second']} images/s)"
        )
        for failure in result["failures"]:
            print(f"  failed: {failure['uri']}: {failure['reason']}")
        verb = "skipped" if args.near_duplicates == "skip" else "added"
        for near in result["near_duplicates"]:
            of = near["of_uri"] or f"image {near['of_id']}"
            print(f"  near-duplicate ({verb}): {near['uri']} ~ {of} (cosine {near['score']:.4f})")
    return 0


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
    ingest = sub.add_parser("ingest", parents=[model_opts], help="embed and index a folder, a URL list or a manifest")
    ingest.add_argument("source", nargs="?", help="a folder of images (recursive)")
    ingest.add_argument(
        "--manifest", help="CSV, JSONL or Parquet with a path/url column; other columns become metadata"
    )
    ingest.add_argument("--urls", help="a text file of image URLs, one a line")
    ingest.add_argument("--column", help="the manifest's path/URL column (default: path, url, uri...)")
    ingest.add_argument("--collection", default="default")
    ingest.add_argument("--batch-size", type=int)
    ingest.add_argument("--quiet", action="store_true", help="no progress bar")
    ingest.add_argument("--json", action="store_true", help="print the summary as JSON")
    ingest.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: decode threads and one model in this process; ray: Ray Data over a pool of encoder actors "
        "(pip install 'pe-search[ray]')",
    )
    ingest.add_argument(
        "--ray-address", help="the Ray cluster to use, e.g. HEAD:6379 (default: start a local Ray instance)"
    )
    ingest.add_argument(
        "--ray-actors",
        type=positive_int,
        help="encoder actors (default: one per GPU, else one per --ray-cpus-per-actor CPUs)",
    )
    ingest.add_argument(
        "--ray-cpus-per-actor",
        type=positive_float,
        default=1.0,
        help="CPUs reserved per CPU actor, also its torch threads (at least 1); TORCH_THREADS does not apply to actors",
    )
    ingest.add_argument(
        "--ray-stall-timeout",
        type=positive_float,
        metavar="SECONDS",
        help="cancel the run (committed batches stay) when no batch completes for this long while an actor is dead "
        "or restarting (default: 180, or 10 per item of a batch if more)",
    )
    ingest.add_argument(
        "--near-duplicates",
        choices=["warn", "skip"],
        help="check each new image against the collection (and its batch): warn = add and report, "
        "skip = leave it out and report",
    )
    ingest.add_argument(
        "--near-threshold",
        type=unit_interval,
        metavar="COSINE",
        help="cosine at or above which an image is a near-duplicate (default PE_SEARCH_DUPLICATE_THRESHOLD, 0.99)",
    )
    ingest.set_defaults(func=cmd_ingest)
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
