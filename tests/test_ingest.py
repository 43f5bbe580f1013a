"""Ingestion into a real SQLite file and FAISS index, with the real encoder (random weights)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from app.ingest.pipeline import Ingestor
from app.ingest.sources import SourceError, folder_items, manifest_items, url_list_items
from app.media.fetch import UrlFetcher, UrlPolicy
from app.model.encoder import PEEncoder
from index.errors import ModelMismatchError
from index.filters import SearchFilter
from index.store import VectorStore
from tests.support.images import encode, photo
from tests.support.ingest import ingestor, make_folder
from tests.support.store import open_store


@pytest.fixture()
def store(request: pytest.FixtureRequest, tmp_path: Path) -> VectorStore:
    """On SQLite; on SQLite and PostgreSQL for tests marked `usefixtures("db_url")`."""
    url = request.getfixturevalue("db_url") if "db_url" in request.fixturenames else None
    opened = open_store(tmp_path / "store", url)
    yield opened
    opened.engine.dispose()


def test_folder_of_mixed_formats_with_bad_files(tmp_path: Path, store: VectorStore, encoder: PEEncoder) -> None:
    paths = make_folder(tmp_path / "photos")
    summary = ingestor(store, encoder).run(folder_items(tmp_path / "photos"), collection="photos")
    assert (summary.added, summary.unchanged, summary.duplicates) == (12, 0, 0)
    failed = dict(summary.failed)
    assert set(failed) == {str((tmp_path / "photos" / n).resolve()) for n in ("corrupt.jpg", "empty.png")}
    assert "empty" in failed[str((tmp_path / "photos" / "empty.png").resolve())]
    info = store.collection("photos")
    assert (info.count, info.model, info.dim) == (12, "PE-Core-T16-384", 512)
    assert len(store.failures(info.id)) == 2
    # Image-to-image: each ingested file finds itself first, with a cosine of ~1.
    for path in paths:
        from app.media.decode import decode_image

        query = encoder.embed_images([decode_image(path.read_bytes())])[0]
        top = store.search(info.id, query, 3)[0]
        assert store.image(top.id).uri == str(path.resolve()) and top.score == pytest.approx(1.0, abs=1e-4)


def test_reingest_adds_nothing_and_skips_reading(
    tmp_path: Path, store: VectorStore, encoder: PEEncoder, monkeypatch
) -> None:
    make_folder(tmp_path / "photos")
    ingestor(store, encoder).run(folder_items(tmp_path / "photos"), collection="c")
    reads: list[Path] = []
    original = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self) or original(self))
    again = ingestor(store, encoder).run(folder_items(tmp_path / "photos"), collection="c")
    assert (again.added, again.unchanged, again.duplicates) == (0, 12, 0)
    assert {p.name for p in reads} == {"corrupt.jpg", "empty.png"}  # only the failures are retried
    assert store.collection("c").count == 12


def test_changed_file_is_read_again(tmp_path: Path, store: VectorStore, encoder: PEEncoder) -> None:
    paths = make_folder(tmp_path / "photos", count=3)
    ingestor(store, encoder).run(folder_items(tmp_path / "photos"), collection="c")
    paths[1].write_bytes(encode(photo(99, 77, seed=999), "PNG"))
    os.utime(paths[1], (1_700_000_000, 1_700_000_000))
    summary = ingestor(store, encoder).run(folder_items(tmp_path / "photos"), collection="c")
    assert (summary.added, summary.unchanged) == (1, 2)


@pytest.mark.usefixtures("db_url")
def test_duplicates_are_stored_once(tmp_path: Path, store: VectorStore, encoder: PEEncoder) -> None:
    paths = make_folder(tmp_path / "photos", count=4)
    shutil.copy(paths[0], tmp_path / "photos" / "copy-a.jpg")
    shutil.copy(paths[0], tmp_path / "photos" / "copy-b.jpg")
    summary = ingestor(store, encoder, batch_size=2).run(folder_items(tmp_path / "photos"), collection="c")
    assert (summary.added, summary.duplicates) == (4, 2)
    assert store.collection("c").count == 4
    rerun = ingestor(store, encoder).run(folder_items(tmp_path / "photos"), collection="c")
    assert (rerun.added, rerun.unchanged, rerun.duplicates) == (0, 6, 0)


def test_symlinks_never_lead_out_of_the_root(tmp_path: Path, store: VectorStore, encoder: PEEncoder) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(encode(photo(50, 50, seed=1), "PNG"))
    root = tmp_path / "photos"
    make_folder(root, count=2)
    (root / "link.png").symlink_to(outside / "secret.png")
    (root / "linked-dir").symlink_to(outside, target_is_directory=True)
    (root / "inside-link.png").symlink_to(next(root.glob("photo1.*")))
    summary = ingestor(store, encoder).run(folder_items(root), collection="c")
    reasons = dict(summary.failed)
    assert "outside the ingest root" in reasons[str(root / "link.png")]
    assert summary.added == 2 and summary.duplicates == 1  # inside-link.png is photo1 again
    assert not any("secret" in image.uri for image in store.images(list(range(1, 100))).values())


@pytest.mark.usefixtures("db_url")
def test_manifest_metadata_and_filters(tmp_path: Path, store: VectorStore, encoder: PEEncoder) -> None:
    paths = make_folder(tmp_path / "photos", count=6)
    rows = [
        {"path": str(p.relative_to(tmp_path)), "label": "cat" if i % 2 else "dog", "rank": i}
        for i, p in enumerate(paths)
    ]
    (tmp_path / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    summary = ingestor(store, encoder).run(manifest_items(tmp_path / "manifest.jsonl"), collection="m")
    assert summary.added == 6 and len(summary.failed) == 1 and "not valid JSON" in summary.failed[0][1]
    csv_lines = ["file,label,rank"] + [f"{r['path']},{r['label']},{r['rank']}" for r in rows]
    (tmp_path / "manifest.csv").write_text("\n".join(csv_lines) + "\n")
    csv_summary = ingestor(store, encoder).run(manifest_items(tmp_path / "manifest.csv"), collection="m-csv")
    assert csv_summary.added == 6
    info = store.collection("m")
    query = encoder.embed_texts(["anything"])[0]
    dogs = store.search(info.id, query, 10, SearchFilter(metadata={"label": "dog"}))
    assert len(dogs) == 3 and all(store.image(h.id).meta["label"] == "dog" for h in dogs)
    assert {
        store.image(h.id).meta["rank"]
        for h in store.search(info.id, query, 10, SearchFilter(metadata={"rank": [1, 4]}))
    } == {1, 4}
    csv_info = store.collection("m-csv")
    assert {
        store.image(h.id).meta["rank"]
        for h in store.search(csv_info.id, query, 10, SearchFilter(metadata={"rank": "4"}))
    } == {"4"}


def test_manifest_without_a_path_column_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("label,score\ncat,1\n")
    with pytest.raises(SourceError, match="no path"):
        list(manifest_items(tmp_path / "bad.csv"))


def test_url_list_from_a_local_server(tmp_path: Path, store: VectorStore, encoder: PEEncoder) -> None:
    import threading
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    make_folder(tmp_path / "web", count=3)
    handler = partial(SimpleHTTPRequestHandler, directory=str(tmp_path / "web"))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        names = sorted(p.relative_to(tmp_path / "web").as_posix() for p in (tmp_path / "web").rglob("photo*"))
        lines = ["# photos", *[f"{base}/{n}" for n in names], f"{base}/missing.jpg", "ftp://x/y.jpg", ""]
        (tmp_path / "urls.txt").write_text("\n".join(lines))
        summary = ingestor(store, encoder).run(url_list_items(tmp_path / "urls.txt"), collection="u")
        assert summary.added == len(lines) - 4 and len(summary.failed) == 2
        assert "HTTP 404" in dict(summary.failed)[f"{base}/missing.jpg"]
        assert (
            ingestor(store, encoder).run(url_list_items(tmp_path / "urls.txt"), collection="u").unchanged
            == summary.added
        )
    finally:
        httpd.shutdown()


def test_restart_keeps_everything(tmp_path: Path, encoder: PEEncoder) -> None:
    make_folder(tmp_path / "photos", count=5)
    first = open_store(tmp_path / "store")
    ingestor(first, encoder).run(folder_items(tmp_path / "photos"), collection="c")
    info = first.collection("c")
    query = encoder.embed_texts(["a photo"])[0]
    before = [(h.id, round(h.score, 5)) for h in first.search(info.id, query, 5)]
    first.delete_images([before[0][0]])
    first.close()
    second = open_store(tmp_path / "store")
    after = [(h.id, round(h.score, 5)) for h in second.search(info.id, query, 5)]
    assert after == before[1:]
    assert second.collection("c").count == 4


def test_collection_of_another_model_is_refused(tmp_path: Path, store: VectorStore, encoder: PEEncoder) -> None:
    store.create_collection("big", model="PE-Core-L14-336", dim=1024)
    make_folder(tmp_path / "photos", count=1)
    with pytest.raises(ModelMismatchError, match="PE-Core-L14-336"):
        ingestor(store, encoder).run(folder_items(tmp_path / "photos"), collection="big")
    assert store.collection("big").count == 0


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not a folder"):
        list(folder_items(tmp_path / "nope"))


def test_batches_embed_like_one_by_one(tmp_path: Path, store: VectorStore, encoder: PEEncoder) -> None:
    paths = make_folder(tmp_path / "photos", count=7)
    ingestor(store, encoder, batch_size=3).run(folder_items(tmp_path / "photos"), collection="c")
    from app.media.decode import decode_image

    for path in paths:
        image_id = next(i for i, img in store.images(list(range(1, 50))).items() if img.uri == str(path.resolve()))
        expected = encoder.embed_images([decode_image(path.read_bytes())])[0]
        np.testing.assert_allclose(store.vector(image_id)[1], expected, atol=1e-5)


@pytest.fixture(scope="module")
def other_encoder() -> PEEncoder:
    from app.model.variants import get_variant

    return PEEncoder(get_variant("PE-Core-S16-384"), weights="random", device="cpu").load()


def reembed(store: VectorStore, encoder: PEEncoder, tmp_path: Path):  # noqa: ANN201
    from app.services.images import UploadFiles
    from app.services.reembed import reembed_collection

    return reembed_collection(
        store=store,
        encoder=encoder,
        uploads=UploadFiles(tmp_path / "uploads"),
        fetcher=UrlFetcher(UrlPolicy()),
        name="c",
        batch_size=3,
    )


@pytest.mark.slow  # other_encoder: a second model, built for these two
def test_reindex_with_another_model_switches_every_vector(tmp_path, store, encoder, other_encoder) -> None:
    from app.media.decode import decode_image

    paths = make_folder(tmp_path / "photos", count=5)
    ingestor(store, encoder).run(folder_items(tmp_path / "photos"), collection="c")
    result = reembed(store, other_encoder, tmp_path)
    assert result.failed == [] and result.info.model == "PE-Core-S16-384" and result.info.indexed == 5
    for path in paths:
        query = other_encoder.embed_images([decode_image(path.read_bytes())])[0]
        top = store.search(result.info.id, query, 1)[0]
        assert store.image(top.id).uri == str(path.resolve()) and top.score == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ModelMismatchError):
        store.ensure_collection("c", model="PE-Core-T16-384", dim=512)


@pytest.mark.slow  # other_encoder: a second model, built for these two
def test_reindex_with_another_model_changes_nothing_if_a_source_is_gone(
    tmp_path, store, encoder, other_encoder
) -> None:
    paths = make_folder(tmp_path / "photos", count=4)
    ingestor(store, encoder).run(folder_items(tmp_path / "photos"), collection="c")
    before = {i: store.vector(i)[1].copy() for i in store.images(list(range(1, 20)))}
    paths[2].unlink()
    result = reembed(store, other_encoder, tmp_path)
    assert result.info is None and len(result.failed) == 1 and "no longer" in result.failed[0][1]
    assert store.collection("c").model == "PE-Core-T16-384"
    for image_id, vector in before.items():
        np.testing.assert_array_equal(store.vector(image_id)[1], vector)


def test_large_jpegs_ingest_at_reduced_scale_with_their_full_size_recorded(
    tmp_path: Path, store: VectorStore, encoder: PEEncoder
) -> None:
    folder = tmp_path / "large"
    folder.mkdir()
    (folder / "big.jpg").write_bytes(encode(photo(1600, 1200, seed=3), "JPEG", quality=92))
    drafted = ingestor(store, encoder).run(folder_items(folder), collection="draft")
    full_store = open_store(tmp_path / "full")
    Ingestor(store=full_store, encoder=encoder, fetcher=UrlFetcher(UrlPolicy()), jpeg_draft=False).run(
        folder_items(folder), collection="full"
    )
    assert drafted.added == 1
    image = store.image(1)
    assert (image.width, image.height) == (1600, 1200)
    # Decoded at 1/2 scale (800x600, each side >= 384), the embedding stays the full decode's.
    cosine = float(store.vector(1)[1] @ full_store.vector(1)[1])
    assert 0.999 < cosine < 1.0
