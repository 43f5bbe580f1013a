"""Ingest from a bucket against ingest of the same files from disk, in one run (issue #15).

The bucket is moto's S3 server on loopback (`moto_server`, a separate process): it measures
what the object path adds (listing, one GET per object, ETag bookkeeping) over reading files,
not the latency of a real region. Both runs use the same encoder, the same images and a fresh
store each; the re-run is the unchanged-skip (files by size and mtime, objects by ETag and size,
nothing read). The listing is also timed alone over a prefix of many small keys.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image

from bench.ingest import make_jpegs
from bench.machine import describe


def _ingest(encoder: Any, items: Any, data: Path, objects: Any) -> tuple[float, dict[str, Any]]:
    from app.ingest.pipeline import Ingestor
    from app.media.fetch import UrlFetcher, UrlPolicy
    from app.services.storage import open_store
    from app.settings import Settings

    store = open_store(Settings(data_dir=data))
    ingestor = Ingestor(store=store, encoder=encoder, fetcher=UrlFetcher(UrlPolicy()), objects=objects)
    began = time.perf_counter()
    summary = ingestor.run(items(), collection="bench")
    seconds = time.perf_counter() - began
    store.close()
    return seconds, summary.to_dict()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench objects")
    parser.add_argument("--n", type=int, default=48, help="images (640x480 to 4000x3000 JPEGs)")
    parser.add_argument("--keys", type=int, default=5000, help="small keys for the listing alone")
    parser.add_argument("--model", default="PE-Core-T16-384")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    from app.ingest.sources import folder_items, object_items
    from app.media.objects import ObjectStorage
    from app.model.encoder import PEEncoder
    from app.model.variants import get_variant
    from app.settings import ObjectPolicy
    from tests.support.objects import credentials_in_env, s3_server

    encoder = PEEncoder(get_variant(args.model), weights="random", device="cpu").load()
    report: dict[str, Any] = {"machine": describe(), "n": args.n, "model": args.model}
    with tempfile.TemporaryDirectory() as tmp, credentials_in_env(), s3_server(Path(tmp)) as s3:
        root = Path(tmp) / "images"
        root.mkdir()
        paths = make_jpegs(root, args.n)
        report["bytes"] = sum(p.stat().st_size for p in paths)
        client = s3.client()
        client.create_bucket(Bucket="bench")
        for path in paths:
            client.put_object(Bucket="bench", Key=f"images/{path.name}", Body=path.read_bytes())
        objects = ObjectStorage(ObjectPolicy(s3_endpoint_url=s3.endpoint, max_bytes=64 * 1024**2))
        encoder.embed_pixels([encoder.transform(Image.new("RGB", (64, 64)))])  # the first pass's set-up, not timed

        def from_disk() -> Any:
            return folder_items(root)

        def from_bucket() -> Any:
            return object_items("s3://bench/images", objects)

        for name, items in (("disk", from_disk), ("bucket", from_bucket)):
            data = Path(tmp) / f"data-{name}"
            first, summary = _ingest(encoder, items, data, objects)
            again, rerun = _ingest(encoder, items, data, objects)
            assert summary["added"] == args.n and rerun["unchanged"] == args.n, (summary, rerun)
            report[name] = {
                "seconds": round(first, 3),
                "images_per_second": round(args.n / first, 2),
                "rerun_seconds": round(again, 3),
            }
        report["bucket_over_disk"] = round(report["bucket"]["seconds"] / report["disk"]["seconds"], 3)

        with ThreadPoolExecutor(8) as pool:
            keys = [f"many/{i:06d}.txt" for i in range(args.keys)]
            list(pool.map(lambda key: client.put_object(Bucket="bench", Key=key, Body=b"-"), keys))
        began = time.perf_counter()
        listed = sum(1 for _ in objects.list("s3://bench/many"))
        seconds = time.perf_counter() - began
        report["listing"] = {"keys": listed, "seconds": round(seconds, 3), "keys_per_second": round(listed / seconds)}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0
