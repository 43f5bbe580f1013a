"""Images in a bucket: ingest from a real S3-compatible server on loopback (moto) equals ingest from disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.errors import SourceError
from app.ingest.pipeline import Ingestor
from app.ingest.sources import SourceItem, folder_items, manifest_items, object_items
from app.media.fetch import UrlFetcher, UrlPolicy
from app.media.objects import ObjectStorage, under_prefix
from app.model.encoder import PEEncoder
from app.settings import ObjectPolicy
from index.store import VectorStore
from tests.support.ingest import make_folder
from tests.support.objects import S3Server, credentials_in_env, s3_server
from tests.support.store import open_store

BUCKET = "photos-bucket"
# More keys than one S3 list page (1,000) under the prefix, so the listing must follow continuation tokens.
FILLERS = 1005


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> S3Server:
    with credentials_in_env(), s3_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="module")
def library(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """The same files on disk and under s3://BUCKET/lib/, plus filler keys past the first list page."""
    root = tmp_path_factory.mktemp("library") / "lib"
    paths = make_folder(root, count=8)
    client = s3.client()
    client.create_bucket(Bucket=BUCKET)
    for path in root.rglob("*"):
        if path.is_file():
            client.put_object(Bucket=BUCKET, Key=f"lib/{path.relative_to(root).as_posix()}", Body=path.read_bytes())
    for i in range(FILLERS):
        client.put_object(Bucket=BUCKET, Key=f"lib/zz-fillers/{i:05d}.txt", Body=b"-")
    client.put_object(Bucket=BUCKET, Key="lib-private/secret.jpg", Body=paths[0].read_bytes())
    return root, paths


def storage(s3: S3Server, **overrides) -> ObjectStorage:
    policy = {"s3_endpoint_url": s3.endpoint, "retries": 1, "connect_timeout": 2.0, **overrides}
    return ObjectStorage(ObjectPolicy(**policy))


def ingestor(store: VectorStore, encoder: PEEncoder, objects: ObjectStorage) -> Ingestor:
    return Ingestor(store=store, encoder=encoder, fetcher=UrlFetcher(UrlPolicy()), objects=objects, batch_size=4)


def by_sha(store: VectorStore, collection: str) -> dict[str, np.ndarray]:
    info = store.collection(collection)
    rows = [record for batch in store.iter_images(info.id) for record in batch]
    return {record.sha256: store.vector(record.id)[1] for record in rows}


def test_listing_streams_past_one_page_and_stays_inside_the_prefix(s3, library) -> None:
    objects = list(storage(s3).list(f"s3://{BUCKET}/lib"))
    assert len(objects) == FILLERS + 11  # 8 images, notes.txt, corrupt.jpg, empty.png, the fillers
    assert not any("lib-private" in o.url for o in objects)  # `lib` is a folder, not a key prefix
    assert all(o.etag for o in objects)
    images = list(object_items(f"s3://{BUCKET}/lib/", storage(s3)))
    assert len(images) == 10 and all(isinstance(i, SourceItem) and i.object_url == i.uri for i in images)


def test_bucket_ingest_equals_disk_ingest(s3, library, encoder: PEEncoder, tmp_path: Path) -> None:
    root, paths = library
    store = open_store(tmp_path)
    objects = storage(s3)
    from_disk = ingestor(store, encoder, objects).run(folder_items(root), collection="disk")
    from_bucket = ingestor(store, encoder, objects).run(
        object_items(f"s3://{BUCKET}/lib", objects), collection="bucket"
    )
    assert (from_bucket.added, len(from_bucket.failed)) == (from_disk.added, len(from_disk.failed)) == (8, 2)
    reasons = dict(from_bucket.failed)
    assert set(reasons) == {f"s3://{BUCKET}/lib/corrupt.jpg", f"s3://{BUCKET}/lib/empty.png"}
    assert all("image" in reason.lower() or "empty" in reason.lower() for reason in reasons.values()), reasons
    disk, bucket = by_sha(store, "disk"), by_sha(store, "bucket")
    assert disk.keys() == bucket.keys()
    assert all(np.array_equal(disk[sha], bucket[sha]) for sha in disk)  # same bytes, same pixels, same vector
    # Each object is a source of its image, named by its URL, as each file is by its path.
    info = store.collection("bucket")
    urls = [f"s3://{BUCKET}/lib/{p.relative_to(root).as_posix()}" for p in paths]
    known = store.known_sources(info.id, urls)
    assert len(known) == 8 and all(source.etag and source.size for source in known.values())
    # The same text query ranks the same images in the same order in both collections.
    query = encoder.embed_texts(["a photo"])[0]
    disk_hits = store.search(store.collection("disk").id, query, 8)
    bucket_hits = store.search(info.id, query, 8)
    assert [store.image(h.id).sha256 for h in disk_hits] == [store.image(h.id).sha256 for h in bucket_hits]
    assert [round(h.score, 5) for h in disk_hits] == [round(h.score, 5) for h in bucket_hits]


def test_a_rerun_skips_unchanged_objects_by_etag_and_reads_a_changed_one(s3, library, encoder, tmp_path) -> None:
    root, paths = library
    client = s3.client()
    client.create_bucket(Bucket="rerun")
    for i, path in enumerate(paths[:4]):
        client.put_object(Bucket="rerun", Key=f"p/{i}.{path.suffix[1:]}", Body=path.read_bytes())
    store, objects = open_store(tmp_path), storage(s3)
    first = ingestor(store, encoder, objects).run(object_items("s3://rerun/p", objects), collection="c")
    assert first.added == 4
    again = ingestor(store, encoder, objects).run(object_items("s3://rerun/p", objects), collection="c")
    assert (again.unchanged, again.added, again.duplicates) == (4, 0, 0)
    client.put_object(Bucket="rerun", Key=f"p/0.{paths[0].suffix[1:]}", Body=paths[5].read_bytes())
    changed = ingestor(store, encoder, objects).run(object_items("s3://rerun/p", objects), collection="c")
    assert (changed.unchanged, changed.added) == (3, 1)
    assert store.collection("c").count == 4  # the replaced content's image went with its only source


def test_manifest_rows_may_name_objects(s3, library, encoder, tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "path,label\n"
        f"s3://{BUCKET}/lib/photo1.png,one\n"
        f"s3://{BUCKET}/lib/missing.jpg,gone\n"
        f"s3://{BUCKET}/lib-private/secret.jpg,private\n"
    )
    items = list(manifest_items(manifest, allowed_roots=(tmp_path,), allowed_objects=(f"s3://{BUCKET}/lib",)))
    assert [getattr(i, "reason", None) for i in items][2] == "the object is outside the allowed ingest prefixes"
    store, objects = open_store(tmp_path), storage(s3)
    summary = ingestor(store, encoder, objects).run(items, collection="m")
    assert summary.added == 1 and len(summary.failed) == 2
    assert "no such object" in dict(summary.failed)[f"s3://{BUCKET}/lib/missing.jpg"]
    record = next(r for batch in store.iter_images(store.collection("m").id) for r in batch)
    assert record.meta == {"label": "one"} and record.uri == f"s3://{BUCKET}/lib/photo1.png"


@pytest.mark.parametrize(
    "url,expected",
    [
        ("s3://no-such-bucket/lib", "the bucket or prefix does not exist"),
        (f"s3://{BUCKET}/no/such/prefix", "no objects under"),
    ],
)
def test_missing_bucket_or_prefix_is_a_readable_error(s3, library, url: str, expected: str, tmp_path) -> None:
    with pytest.raises(SourceError, match=expected):
        list(object_items(url, storage(s3)))


def test_an_unreachable_store_ends_the_run_with_nothing_committed(encoder, tmp_path: Path) -> None:
    dead = ObjectStorage(ObjectPolicy(s3_endpoint_url="http://127.0.0.1:9", retries=1, connect_timeout=1.0))
    store = open_store(tmp_path)
    with credentials_in_env(), pytest.raises(SourceError, match="unreachable"):
        ingestor(store, encoder, dead).run(object_items(f"s3://{BUCKET}/lib", dead), collection="dead")
    assert store.collection("dead").count == 0


def test_denied_credentials_are_a_readable_error(tmp_path: Path) -> None:
    with (
        credentials_in_env(),
        s3_server(tmp_path, enforce_auth=True) as guarded,
        pytest.raises(SourceError) as refused,
    ):
        list(object_items("s3://any-bucket/x", storage(guarded)))
    message = str(refused.value)
    assert "access denied" in message and "testing-secret" not in message


def test_an_object_over_the_size_limit_is_refused_before_its_body_is_read(s3, library, encoder, tmp_path) -> None:
    small = storage(s3, max_bytes=4096)
    summary = ingestor(open_store(tmp_path), encoder, small).run(
        object_items(f"s3://{BUCKET}/lib", small), collection="s"
    )
    too_big = {uri: reason for uri, reason in summary.failed if "over the 4096-byte limit" in reason}
    assert len(too_big) == 8 and summary.added == 0, summary.failed


def test_a_resumed_bucket_job_is_checked_against_the_prefixes_as_they_are_now(client: TestClient, monkeypatch):
    from datetime import UTC, datetime

    from index.job_records import JobRecord

    ingest = client.app.state.services.ingest
    record = JobRecord(
        id="j", collection="c", kind="folder", source="s3://b/private/x", options={}, status="running",
        summary={}, error=None, attempts=1, cancel_requested=False, created_at=datetime.now(UTC),
        started_at=None, finished_at=None,
    )  # fmt: skip
    monkeypatch.setattr(client.app.state.settings, "ingest_roots", "s3://b/private")
    assert ingest.source_gone(record) is None
    monkeypatch.setattr(client.app.state.settings, "ingest_roots", "s3://b/public")
    assert "no longer under PE_SEARCH_INGEST_ROOTS" in ingest.source_gone(record)


@pytest.mark.parametrize(
    "url,allowed",
    [
        ("s3://b/photos/x.jpg", True),
        ("s3://b/photos", True),
        ("s3://b/photos/", True),
        ("S3://b/photos/x.jpg", True),
        ("s3://b/photos-private/x.jpg", False),
        ("s3://b/photos/../private/x.jpg", False),
        ("s3://other/photos/x.jpg", False),
        ("gs://b/photos/x.jpg", False),
        ("/srv/photos/x.jpg", False),
        ("gcs://g/photos/x.jpg", True),  # gs:// and gcs:// are one store
        ("s3:///photos/x.jpg", False),
    ],
)
def test_allowed_prefixes_are_whole_segments(url: str, allowed: bool) -> None:
    assert under_prefix(url, ("s3://b/photos/", "/srv", "gs://g/photos", "s3:///")) is allowed


def test_server_job_reads_a_bucket_only_under_an_allowed_prefix(client: TestClient, s3, library, monkeypatch) -> None:
    settings = client.app.state.settings
    monkeypatch.setattr(settings, "s3_endpoint_url", s3.endpoint)
    monkeypatch.setattr(settings, "object_retries", 1)
    monkeypatch.setattr(settings, "ingest_roots", f"s3://{BUCKET}/lib")
    refused = client.post("/ingest", json={"source": f"s3://{BUCKET}/lib-private", "collection": "s3job"})
    assert refused.status_code == 403
    started = client.post("/ingest", json={"source": f"s3://{BUCKET}/lib", "collection": "s3job"})
    assert started.status_code == 202, started.text
    missing = client.post("/ingest", json={"source": f"s3://{BUCKET}/lib/nothing-here", "collection": "s3job"})
    assert missing.status_code == 202
    assert client.app.state.services.jobs.wait_idle(120)
    job = client.get(f"/ingest/{started.json()['id']}").json()
    assert job["status"] == "done" and job["summary"]["added"] == 8 and job["summary"]["failed"] == 2, job
    failed = client.get(f"/ingest/{missing.json()['id']}").json()
    assert failed["status"] == "failed" and failed["error"].startswith(f"no objects under s3://{BUCKET}/lib/nothing")
    client.delete("/collections/s3job")
