"""`pe-search ingest`: a folder, a bucket prefix, a URL list or a manifest, once or watched."""

from __future__ import annotations

import argparse
import queue
import signal
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.cli.args import positive_float, positive_int, print_json, unit_interval
from app.settings import Settings

if TYPE_CHECKING:
    # Imported where used, so `pe-search --help` and light commands do not pay for torch and FAISS.
    from app.ingest.pipeline import Ingestor
    from app.ingest.ray_engine import RayIngestor
    from app.ingest.sources import Rejected, SourceItem
    from app.ingest.writer import IngestSummary
    from index.store import VectorStore


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


def _items(args: argparse.Namespace, settings: Settings) -> tuple[Iterable[SourceItem | Rejected], int | None]:
    from app.ingest.sources import count_folder, folder_items, manifest_items, object_items, url_list_items
    from app.media.objects import ObjectStorage, is_object_url

    if args.source is not None and is_object_url(args.source):
        return object_items(args.source, ObjectStorage(settings.object_policy())), None
    if args.source is not None:
        return folder_items(Path(args.source)), count_folder(Path(args.source))
    if args.manifest is not None:
        return manifest_items(Path(args.manifest), args.column), None
    return url_list_items(Path(args.urls)), None


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from app.services.storage import open_store

    if sum(x is not None for x in (args.source, args.manifest, args.urls)) != 1:
        print(
            "pe-search: give exactly one of SOURCE (a folder or bucket prefix), --manifest FILE or --urls FILE",
            file=sys.stderr,
        )
        return 2
    if args.watch and (args.source is None or "://" in args.source or args.engine != "local"):
        print("pe-search: --watch takes a local folder as SOURCE, with the local engine", file=sys.stderr)
        return 2
    items, total = _items(args, settings)
    store = open_store(settings)
    try:
        ingestor = _ingestor(args, settings, store)
        if args.watch:
            return _watch(args, settings, ingestor)
        with tqdm(total=total, unit="img", disable=args.quiet or None, file=sys.stderr, dynamic_ncols=True) as bar:

            def progress(summary: IngestSummary) -> None:
                bar.update(summary.processed - bar.n)
                bar.set_postfix(added=summary.added, dup=summary.duplicates, failed=len(summary.failed), refresh=False)

            summary = ingestor.run(items, collection=args.collection, progress=progress)
    finally:
        store.close()
    _report(args, summary.to_dict())
    return 0


def _report(args: argparse.Namespace, result: dict[str, Any]) -> None:
    if args.json:
        print_json(result)
        return
    removed = f", {result['removed']} removed" if result.get("removed") else ""
    print(
        f"{result['added']} added, {result['unchanged']} unchanged, {result['duplicates']} duplicates, "
        f"{result['failed']} failed{removed} in {result['seconds']:.1f} s ({result['images_per_second']} images/s)",
        flush=True,
    )
    for failure in result["failures"]:
        print(f"  failed: {failure['uri']}: {failure['reason']}")
    verb = "skipped" if args.near_duplicates == "skip" else "added"
    for near in result["near_duplicates"]:
        of = near["of_uri"] or f"image {near['of_id']}"
        print(f"  near-duplicate ({verb}): {near['uri']} ~ {of} (cosine {near['score']:.4f})")


def _watch(args: argparse.Namespace, settings: Settings, ingestor: Ingestor | RayIngestor) -> int:
    """The folder watched, then synced once (vanished files removed too), then each settled batch of changes
    applied, until stopped. Watching starts first, so a file added during the sync is not missed."""
    from app.ingest.changes import apply_changes, sync_folder
    from app.ingest.pipeline import Ingestor
    from app.ingest.watch import Changes, watch_folder

    assert isinstance(ingestor, Ingestor)
    root = Path(args.source).resolve()
    stop, ready = threading.Event(), threading.Event()
    # SIGTERM (docker stop, systemd) ends the watch like Ctrl-C: the batch in hand is committed first.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    found: queue.Queue[Changes] = queue.Queue()

    def follow() -> None:
        for changes in watch_folder(
            root, stop=stop, settle_s=args.settle or settings.watch_settle_s, on_ready=ready.set
        ):
            found.put(changes)

    watcher = threading.Thread(target=follow, name="pe-watch", daemon=True)
    watcher.start()
    while not ready.wait(0.1):
        if not watcher.is_alive():
            return 2  # watchfiles said why on stderr
    _report(args, sync_folder(ingestor, collection=args.collection, root=root, cancel=stop).to_dict())
    print(f"watching {root} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    while not stop.is_set():
        try:
            changes = found.get(timeout=0.2)
        except queue.Empty:
            continue
        summary = apply_changes(
            ingestor,
            collection=args.collection,
            root=root,
            upserts=changes.upserts,
            deletes=changes.deletes,
            deleted_dirs=changes.deleted_dirs,
            cancel=stop,
        )
        _report(args, summary.to_dict())
    watcher.join(timeout=10)
    return 0


def add_ingest_command(sub: argparse._SubParsersAction, model_opts: argparse.ArgumentParser) -> None:
    ingest = sub.add_parser(
        "ingest", parents=[model_opts], help="embed and index a folder, a bucket prefix, a URL list or a manifest"
    )
    ingest.add_argument(
        "source", nargs="?", help="a folder of images (recursive), or an s3:// gs:// az:// prefix (pe-search[s3]...)"
    )
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
    ingest.add_argument(
        "--watch",
        action="store_true",
        help="after the first pass, keep the folder in sync until stopped (Ctrl-C or SIGTERM): new and changed files "
        "are added, deleted ones removed",
    )
    ingest.add_argument(
        "--settle",
        type=positive_float,
        metavar="SECONDS",
        help="with --watch: read a changed file once it has held still this long (default PE_SEARCH_WATCH_SETTLE_S, 1)",
    )
    ingest.set_defaults(func=cmd_ingest)
