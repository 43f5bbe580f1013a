"""app.client.PESearchClient against real `pe-search serve` processes (PE-Core-T16-384, random weights).

Two module-scoped servers, launched together so their start-ups overlap:

* `server`: open, with PE_SEARCH_INGEST_ROOTS set to a temporary folder.
* `keyed_server`: PE_SEARCH_API_KEYS=k1, for the API-key checks.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np
import pytest

from app.client import (
    AddedImage,
    Collection,
    ImageRecord,
    IngestJob,
    PESearchAPIError,
    PESearchClient,
    SearchHit,
)
from tests.support.images import encode, photo
from tests.support.ingest import make_folder
from tests.support.server import READY_DEADLINE, T16, T16_DIM, Server, launch, wait_ready, wanted

API_KEY = "k1"
# Every test here drives real uvicorn processes.
pytestmark = pytest.mark.slow


def _ready_or_fail(server: Server, workdir: Path, extra_env: dict[str, str]) -> Server:
    """Wait for /ready; relaunch (up to twice) if the port found free was taken before uvicorn bound it."""
    for _attempt in range(3):
        problem = wait_ready(server, READY_DEADLINE)
        if problem is None:
            return server
        server.stop()
        if "address already in use" not in server.log_tail().lower():
            break
        server = launch(workdir, T16, extra_env)
    server.stop()  # also a relaunch never waited for
    log = server.log_tail()
    pytest.fail(f"pe-search server did not start: {problem}\n--- server log ---\n{log}", pytrace=False)


@contextlib.contextmanager
def _logs_on_failure(request: pytest.FixtureRequest, server: Server, name: str):
    failed_before = request.session.testsfailed
    try:
        yield
    finally:
        server.stop()
        if request.session.testsfailed > failed_before:
            capture = request.config.pluginmanager.getplugin("capturemanager")
            with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
                sys.stderr.write(f"\n--- {name} log (port {server.port}) ---\n{server.log_tail()}\n--- end ---\n")


@pytest.fixture(scope="module")
def ingest_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ingest-root")


@pytest.fixture(scope="module")
def _servers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, ingest_root: Path):
    """Both servers started at once (the keyed one only if a selected test needs it)."""
    envs = {
        "server": {"PE_SEARCH_INGEST_ROOTS": str(ingest_root)},
        "keyed_server": {"PE_SEARCH_API_KEYS": API_KEY},
    }
    workdirs = {name: tmp_path_factory.mktemp(name) for name in envs if wanted(request, name)}
    launched = {name: launch(workdir, T16, envs[name]) for name, workdir in workdirs.items()}
    try:
        for name in launched:
            launched[name] = _ready_or_fail(launched[name], workdirs[name], envs[name])
        with contextlib.ExitStack() as stack:
            for name, server in launched.items():
                stack.enter_context(_logs_on_failure(request, server, name))
            yield launched
    finally:
        for server in launched.values():
            server.stop()


@pytest.fixture(scope="module")
def server(_servers: dict[str, Server]) -> Server:
    return _servers["server"]


@pytest.fixture(scope="module")
def keyed_server(_servers: dict[str, Server]) -> Server:
    return _servers["keyed_server"]


@pytest.fixture(scope="module")
def client(server: Server):
    with PESearchClient(api_url=server.url + "/", timeout=30) as opened:  # a trailing slash is tolerated
        yield opened


def _write(folder: Path, name: str, seed: int, fmt: str = "JPEG") -> Path:
    path = folder / name
    path.write_bytes(encode(photo(320, 240, seed=seed), fmt))
    return path


# --- images and search -----------------------------------------------------------------------


def test_upload_then_search_image_finds_itself_first(client: PESearchClient, tmp_path: Path) -> None:
    paths = [_write(tmp_path, f"p{i}.jpg", seed=10 + i) for i in range(3)]
    added = [client.add_image(p, metadata={"n": i}, collection="self") for i, p in enumerate(paths)]
    assert all(isinstance(a, AddedImage) and a.created and a.collection == "self" for a in added)
    assert len({a.id for a in added}) == 3

    for query in (str(paths[1]), paths[1], paths[1].read_bytes()):  # str path, Path, bytes
        hits = client.search_image(query, top_k=3, collection="self")
        assert [type(h) for h in hits] == [SearchHit] * 3
        top = hits[0]
        assert top.id == added[1].id
        assert top.score == pytest.approx(1.0, abs=1e-4)
        assert (top.width, top.height, top.format, top.metadata) == (320, 240, "JPEG", {"n": 1})
        assert top.file_url == f"{client.api_url}/images/{top.id}/file"
        assert hits[0].score >= hits[1].score >= hits[2].score


def test_search_text_and_search_id(client: PESearchClient, tmp_path: Path) -> None:
    labels = ["dog", "cat", "dog", "car"]
    paths = [_write(tmp_path, f"t{i}.png", seed=20 + i, fmt="PNG") for i in range(len(labels))]
    ids = [client.add_image(p, metadata={"label": label}, collection="text").id for p, label in zip(paths, labels)]
    hits = client.search_text("a dog on a beach", top_k=10, collection="text")
    assert sorted(h.id for h in hits) == sorted(ids)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all(-1.0 <= h.score <= 1.0 + 1e-5 for h in hits)

    dogs = client.search_text("a dog", collection="text", filter={"metadata": {"label": "dog"}})
    assert sorted(h.id for h in dogs) == sorted(ids[i] for i, label in enumerate(labels) if label == "dog")
    either = client.search_text("x", collection="text", filter={"metadata": {"label": ["cat", "car"]}})
    assert {h.metadata["label"] for h in either} == {"cat", "car"}

    similar = client.search_id(ids[3], top_k=2, collection="text")
    assert len(similar) == 2
    assert similar[0].id == ids[3] and similar[0].score == pytest.approx(1.0, abs=1e-4)
    only_itself = client.search_id(ids[3], collection="text", min_score=0.999)
    assert [h.id for h in only_itself] == [ids[3]]


def test_duplicate_upload_returns_the_same_id(client: PESearchClient) -> None:
    data = encode(photo(256, 192, seed=30), "JPEG", quality=85)
    first = client.add_image(data, metadata={"v": 1}, collection="dups")
    again = client.add_image(data, metadata={"v": 2}, collection="dups")
    assert first.created and not again.created
    assert again.id == first.id
    assert client.get_image(first.id).metadata == {"v": 1}  # the stored copy is kept as it was


def test_get_update_and_download(client: PESearchClient) -> None:
    data = encode(photo(300, 200, seed=40), "PNG")
    added = client.add_image(data, metadata={"label": "dog", "drop": True}, collection="edit")

    record = client.get_image(added.id)
    assert isinstance(record, ImageRecord)
    assert (record.id, record.collection, record.width, record.height) == (added.id, "edit", 300, 200)
    assert (record.format, record.byte_size) == ("PNG", len(data))
    assert record.metadata == {"label": "dog", "drop": True}

    updated = client.update_metadata(added.id, {"label": "cat", "drop": None, "score": 0.5})
    assert updated.metadata == {"label": "cat", "score": 0.5}
    assert updated.updated_at >= record.updated_at
    assert client.get_image(added.id).metadata == {"label": "cat", "score": 0.5}

    assert client.download_image(added.id) == data


def test_delete_then_get_is_a_404_with_the_message(client: PESearchClient) -> None:
    added = client.add_image(encode(photo(seed=50)), collection="gone")
    client.delete_image(added.id)
    with pytest.raises(PESearchAPIError) as caught:
        client.get_image(added.id)
    assert caught.value.status_code == 404
    assert caught.value.message == f"No image with id {added.id}."
    assert str(caught.value) == f"HTTP 404: No image with id {added.id}."
    with pytest.raises(PESearchAPIError) as again:
        client.delete_image(added.id)
    assert again.value.status_code == 404
    assert client.search_text("anything", collection="gone") == []


def test_errors_carry_the_server_message_and_422_detail(client: PESearchClient) -> None:
    with pytest.raises(PESearchAPIError) as invalid:
        client.get_image(0)
    assert invalid.value.status_code == 422
    assert "path.image_id" in invalid.value.message and "greater than or equal to 1" in invalid.value.message
    assert isinstance(invalid.value.detail, list)

    with pytest.raises(PESearchAPIError) as missing:
        client.search_text("x", collection="no-such-collection")
    assert (missing.value.status_code, missing.value.message) == (404, "No collection named 'no-such-collection'.")

    with pytest.raises(PESearchAPIError) as bad_image:
        client.add_image(b"not an image at all", collection="bad")
    assert bad_image.value.status_code == 400
    assert bad_image.value.message.startswith("Could not load input image.")

    # A URL string is sent as a `url` image object; this server refuses plain-http and IP hosts unfetched.
    client.add_image(encode(photo(seed=55)), collection="urls")
    for call in (client.add_image, client.search_image):
        with pytest.raises(PESearchAPIError) as refused_url:
            call("http://127.0.0.1:9/cat.jpg", collection="urls")
        assert refused_url.value.status_code == 400
        assert refused_url.value.message.startswith("Could not load input image. Cause:")


# --- collections -----------------------------------------------------------------------------


def test_collections_create_list_delete(client: PESearchClient) -> None:
    created = client.create_collection("scratch", index_type="flat")
    assert isinstance(created, Collection)
    assert (created.name, created.model, created.dim) == ("scratch", T16, T16_DIM)
    assert (created.count, created.index_type) == (0, "flat")
    assert "scratch" in {c.name for c in client.collections()}

    with pytest.raises(PESearchAPIError) as exists:
        client.create_collection("scratch")
    assert exists.value.status_code == 409 and "already exists" in exists.value.message

    client.add_image(encode(photo(seed=60)), collection="scratch")
    listed = {c.name: c for c in client.collections()}
    assert (listed["scratch"].count, listed["scratch"].indexed) == (1, 1)

    client.delete_collection("scratch")
    assert "scratch" not in {c.name for c in client.collections()}
    with pytest.raises(PESearchAPIError) as gone:
        client.delete_collection("scratch")
    assert gone.value.status_code == 404


# --- ingest ----------------------------------------------------------------------------------


def test_ingest_folder_waits_and_reports_counts(client: PESearchClient, ingest_root: Path) -> None:
    make_folder(ingest_root / "photos", 6)
    job = client.ingest(ingest_root / "photos", collection="ingested", poll_interval=0.1, timeout=60)
    assert isinstance(job, IngestJob)
    assert job.status == "done" and job.finished and job.error is None
    assert (job.summary["added"], job.summary["unchanged"], job.summary["failed"]) == (6, 0, 2)
    assert job.finished_at is not None and job.finished_at >= job.created_at
    assert {c.name: c.count for c in client.collections()}["ingested"] == 6
    hit = client.search_text("a photo", top_k=1, collection="ingested")[0]
    assert Path(hit.uri).is_relative_to(ingest_root.resolve())
    assert client.download_image(hit.id) == Path(hit.uri).read_bytes()  # served from under its ingest root

    started = client.ingest(str(ingest_root / "photos"), collection="ingested", wait=False)
    assert started.status in ("queued", "running", "done")
    rerun = client.ingest(ingest_root / "photos", collection="ingested", poll_interval=0.1, timeout=60)
    assert (rerun.summary["added"], rerun.summary["unchanged"]) == (0, 6)
    assert client.ingest_job(started.id).id == started.id


def test_ingest_outside_the_roots_is_refused(client: PESearchClient, tmp_path: Path) -> None:
    with pytest.raises(PESearchAPIError) as refused:
        client.ingest(tmp_path, collection="nope")
    assert refused.value.status_code == 403 and "PE_SEARCH_INGEST_ROOTS" in refused.value.message
    with pytest.raises(PESearchAPIError) as unknown:
        client.ingest_job("no-such-job")
    assert unknown.value.status_code == 404


# --- embeddings ------------------------------------------------------------------------------


def test_embed_text_shapes_and_unit_norms(client: PESearchClient) -> None:
    vectors = client.embed_text(["a dog on a beach", "a red car", "a bowl of soup"])
    assert vectors.shape == (3, T16_DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    one = client.embed_text("a red car")
    assert one.shape == (1, T16_DIM)
    np.testing.assert_allclose(one[0], vectors[1], atol=1e-5)
    chunked = client.embed_text(["a dog on a beach", "a red car", "a bowl of soup"], batch_size=2)  # two requests
    np.testing.assert_allclose(chunked, vectors, atol=1e-5)


def test_embed_images_shapes_and_unit_norms(client: PESearchClient, tmp_path: Path) -> None:
    path = _write(tmp_path, "e.jpg", seed=70)
    other = encode(photo(200, 300, seed=71), "PNG")
    vectors = client.embed_images([path, other, str(path)])
    assert vectors.shape == (3, T16_DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1], atol=1e-3)
    assert client.embed_images(path).shape == (1, T16_DIM)
    with pytest.raises(ValueError):
        client.embed_images([])


# --- API keys --------------------------------------------------------------------------------


def test_keyed_server_rejects_missing_or_wrong_keys(keyed_server: Server) -> None:
    for key in (None, "wrong"):
        with PESearchClient(keyed_server.url, api_key=key) as anonymous:
            with pytest.raises(PESearchAPIError) as denied:
                anonymous.collections()
            assert denied.value.status_code == 401
            with pytest.raises(PESearchAPIError) as denied_embed:
                anonymous.embed_text("a cat")
            assert denied_embed.value.status_code == 401
    with PESearchClient(keyed_server.url) as anonymous:
        with pytest.raises(PESearchAPIError) as denied:
            anonymous.add_image(encode(photo(seed=80)))
        assert denied.value.status_code == 401 and "API key is required" in denied.value.message


def test_keyed_server_accepts_the_key_as_a_bearer_token(keyed_server: Server) -> None:
    with PESearchClient(keyed_server.url, api_key=API_KEY) as keyed:
        assert "k1" not in repr(keyed)
        data = encode(photo(seed=81))
        added = keyed.add_image(data, metadata={"who": "keyed"})
        assert added.created
        assert keyed.search_image(data, top_k=1)[0].id == added.id
        assert keyed.download_image(added.id) == data
        assert keyed.embed_text("a cat").shape == (1, T16_DIM)
        assert [c.name for c in keyed.collections()] == ["default"]


def test_server_side_ingest_can_skip_near_duplicates(client: PESearchClient, ingest_root: Path) -> None:
    folder = ingest_root / "near"
    folder.mkdir()
    png = _write(folder, "a.png", seed=4040, fmt="PNG")
    from PIL import Image

    Image.open(png).save(folder / "b.bmp")  # the same pixels, other bytes: cosine 1 up to rounding
    job = client.ingest(folder, collection="near", near_duplicates="skip", poll_interval=0.1, timeout=60)
    assert job.status == "done", job.error
    assert (job.summary["added"], job.summary["near_duplicates_skipped"]) == (1, 1)
    (near,) = job.summary["near_duplicates"]
    assert near["uri"].endswith("b.bmp") and near["of_uri"].endswith("a.png") and near["score"] >= 0.99
