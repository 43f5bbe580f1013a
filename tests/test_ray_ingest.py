"""The Ray engine on a real local Ray instance: the same store as the local engine, from every kind of source.

One Ray instance serves the module (2 CPUs, a small object store, on loopback only); each run
starts its own pool of encoder actors (the real PE-Core architecture, random weights), as a
user's run does. Without Ray the module is skipped, unless PE_SEARCH_REQUIRE_RAY is set (CI sets
it, so a missing Ray fails the run).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from app.cli import main as cli_main
from app.encoder import PEEncoder
from app.fetch import UrlFetcher
from app.imaging import decode_image
from app.ingest.pipeline import Ingestor
from app.ingest.ray_engine import RayIngestError, RayIngestor, RayOptions, RaySetupError, connect
from app.ingest.sources import SourceError, folder_items, manifest_items
from app.settings import Settings
from index.db import create_db_engine
from index.models import Image, Source
from index.store import VectorStore
from tests.conftest import TEST_MODEL
from tests.images import encode, photo

REPO = Path(__file__).resolve().parent.parent
# Ray Data warns about its own deprecated options whenever it copies its context; nothing of ours.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    if importlib.util.find_spec("ray") is None and not os.environ.get("PE_SEARCH_REQUIRE_RAY"):
        pytest.skip("Ray is not installed (pip install 'pe-search[ray]')")
    # conftest prepared this process for Ray (loopback only, no usage stats) before anything imported it.
    started = connect(None, num_cpus=2, object_store_memory=300 * 1024**2)
    import ray

    address = ray.get_runtime_context().gcs_address
    # Tests talk to loopback only: the instance, and the CLI joining it below, must not use the machine's address.
    assert address.startswith("127.0.0.1:"), address
    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
    yield address
    if started:
        ray.shutdown()


def make_photos(root: Path) -> list[Path]:
    """10 distinct JPEG and PNG photos in nested folders, a byte-identical copy of one, and a broken JPEG."""
    paths = []
    for i in range(10):
        fmt, ext = ("PNG", "png") if i % 3 == 0 else ("JPEG", "jpg")
        path = root / ("a/b" if i % 2 else "") / f"photo{i}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(photo(160 + 8 * i, 120, seed=700 + i), fmt))
        paths.append(path)
    shutil.copy(paths[4], root / "z_copy_of_photo4.jpg")
    (root / "broken.jpg").write_bytes(encode(photo(160, 120, seed=1), "JPEG")[:300])
    return paths


def open_store(root: Path) -> VectorStore:
    root.mkdir(parents=True, exist_ok=True)
    return VectorStore(engine=create_db_engine(f"sqlite:///{root / 'meta.db'}"), index_dir=root / "indexes").open()


def local_run(store: VectorStore, encoder: PEEncoder, settings: Settings, items, collection: str = "c"):  # noqa: ANN001, ANN201
    ingestor = Ingestor(store=store, encoder=encoder, fetcher=UrlFetcher(settings.url_policy()), batch_size=4, workers=2)
    return ingestor.run(items, collection=collection)


def ray_run(store: VectorStore, settings: Settings, items, collection: str = "c", actors: int | None = None):  # noqa: ANN001, ANN201
    ingestor = RayIngestor(store=store, settings=settings, model=TEST_MODEL, batch_size=4, options=RayOptions(actors=actors))
    return ingestor.run(items, collection=collection)


def contents(store: VectorStore, collection: str = "c") -> dict:
    """Everything a user sees of a collection, keyed by content and uri (not by database id)."""
    info = store.collection(collection)
    with store.sessions() as session:
        images = session.scalars(select(Image).where(Image.collection_id == info.id)).all()
        sources = session.scalars(select(Source).where(Source.collection_id == info.id)).all()
        sha_of = {image.id: image.sha256 for image in images}
        return {
            "images": {i.sha256: (i.uri, i.width, i.height, i.format, i.byte_size, i.meta) for i in images},
            "sources": {s.uri: (sha_of[s.image_id], s.size, s.mtime, s.root) for s in sources},
            "vectors": {i.sha256: np.frombuffer(i.vector, dtype=np.float32) for i in images},
            "failures": sorted(store.failures(info.id)),
            "info": (info.model, info.dim, info.count, info.indexed),
        }


def without_timing(summary) -> dict:  # noqa: ANN001 - IngestSummary
    result = summary.to_dict()
    del result["seconds"], result["images_per_second"]
    return result


def ranked(store: VectorStore, query: np.ndarray, k: int = 5) -> list[tuple[str, float]]:
    info = store.collection("c")
    hits = store.search(info.id, query, k)
    images = store.images([h.id for h in hits])
    return [(images[h.id].uri, h.score) for h in hits]


def test_ray_engine_stores_what_the_local_engine_stores(
    tmp_path: Path, ray_address: str, encoder: PEEncoder, settings: Settings
) -> None:
    paths = make_photos(tmp_path / "photos")
    local, distributed = open_store(tmp_path / "local"), open_store(tmp_path / "ray")
    local_summary = local_run(local, encoder, settings, folder_items(tmp_path / "photos"))
    ray_summary = ray_run(distributed, settings, folder_items(tmp_path / "photos"))

    assert without_timing(ray_summary) == without_timing(local_summary)
    assert (ray_summary.added, ray_summary.duplicates, ray_summary.unchanged) == (10, 1, 0)
    assert [uri for uri, _ in ray_summary.failed] == [str((tmp_path / "photos" / "broken.jpg").resolve())]

    expected, got = contents(local), contents(distributed)
    assert got["info"] == expected["info"] == (TEST_MODEL, 512, 10, 10)
    assert got["images"] == expected["images"]
    assert got["sources"] == expected["sources"] and len(got["sources"]) == 11
    assert got["failures"] == expected["failures"]
    for sha, vector in expected["vectors"].items():
        np.testing.assert_allclose(got["vectors"][sha], vector, atol=1e-5)

    # The same answers to the same queries: a text, and images given as files.
    queries = [encoder.embed_texts(["a photo of a red square"])[0]]
    queries += list(encoder.embed_images([decode_image(p.read_bytes()) for p in paths[:3]]))
    for query in queries:
        want, have = ranked(local, query), ranked(distributed, query)
        assert [uri for uri, _ in have] == [uri for uri, _ in want]
        np.testing.assert_allclose([s for _, s in have], [s for _, s in want], atol=1e-5)
    assert ranked(distributed, queries[1])[0] == (str(paths[0].resolve()), pytest.approx(1.0, abs=1e-4))


def test_ray_rerun_skips_unchanged_files_and_reads_changed_ones(
    tmp_path: Path, ray_address: str, encoder: PEEncoder, settings: Settings
) -> None:
    paths = make_photos(tmp_path / "photos")
    store = open_store(tmp_path / "store")
    local_run(store, encoder, settings, folder_items(tmp_path / "photos"))  # either engine skips what the other stored
    old_sha = contents(store)["sources"][str(paths[1].resolve())][0]
    paths[1].write_bytes(encode(photo(300, 200, seed=999), "JPEG"))
    os.utime(paths[1], (1_700_000_000, 1_700_000_000))
    (tmp_path / "photos" / "new.png").write_bytes(encode(photo(150, 150, seed=998), "PNG"))

    summary = ray_run(store, settings, folder_items(tmp_path / "photos"), actors=1)

    assert (summary.added, summary.unchanged, summary.duplicates) == (2, 10, 0)
    assert [uri for uri, _ in summary.failed] == [str((tmp_path / "photos" / "broken.jpg").resolve())]
    after = contents(store)
    new_sha = after["sources"][str(paths[1].resolve())][0]
    assert new_sha != old_sha and old_sha not in after["images"]  # changed in place: the old content is gone
    assert after["info"][2:] == (11, 11)
    query = encoder.embed_images([decode_image(paths[1].read_bytes())])[0]
    assert ranked(store, query)[0] == (str(paths[1].resolve()), pytest.approx(1.0, abs=1e-4))

    # What the Ray engine stored is recognised as unchanged too (with nothing to read, no actor starts).
    (tmp_path / "photos" / "broken.jpg").unlink()
    again = ray_run(store, settings, folder_items(tmp_path / "photos"))
    assert (again.added, again.unchanged, again.failed) == (0, 12, [])


def test_parquet_manifest_with_metadata_and_the_url_policy_in_the_actors(
    tmp_path: Path, ray_address: str, encoder: PEEncoder, settings: Settings
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = make_photos(tmp_path / "photos")
    rows = [str(p.relative_to(tmp_path)) for p in paths[:4]] + ["photos/missing.jpg", "http://localhost:9/never.jpg"]
    table = pa.table({
        "path": rows,
        "label": ["cat", "dog", "cat", "bird", "none", "url"],
        "score": [0.5, float("nan"), 2.0, 3.5, 0.0, 1.0],
        "rank": [1, 2, 3, 4, 5, 6],
    })
    pq.write_table(table, tmp_path / "manifest.parquet")
    # Private and loopback hosts refused, as a server's default: the actors must apply the driver's policy.
    strict = settings.model_copy(update={"url_allow_private_hosts": False})

    local, distributed = open_store(tmp_path / "local"), open_store(tmp_path / "ray")
    local_summary = local_run(local, encoder, strict, manifest_items(tmp_path / "manifest.parquet"))
    ray_summary = ray_run(distributed, strict, manifest_items(tmp_path / "manifest.parquet"), actors=1)

    assert without_timing(ray_summary) == without_timing(local_summary)
    assert ray_summary.added == 4
    failed = dict(ray_summary.failed)
    assert "private, loopback or reserved" in failed["http://localhost:9/never.jpg"]
    assert "No such file" in failed[str((tmp_path / "photos" / "missing.jpg").resolve())]
    got = contents(distributed)
    assert got["images"] == contents(local)["images"]
    metas = {uri: meta for uri, *_, meta in got["images"].values()}
    assert metas[str(paths[1].resolve())] == {"label": "dog", "score": None, "rank": 2}
    assert metas[str(paths[3].resolve())] == {"label": "bird", "score": 3.5, "rank": 4}


def test_actors_that_cannot_load_the_model_stop_the_run_with_the_cause(
    tmp_path: Path, ray_address: str, settings: Settings
) -> None:
    make_photos(tmp_path / "photos")
    store = open_store(tmp_path / "store")
    missing = settings.model_copy(update={"weights": str(tmp_path / "no-such-checkpoint.pt")})
    with pytest.raises(RayIngestError, match="Checkpoint file not found: .*no-such-checkpoint.pt"):
        ray_run(store, missing, folder_items(tmp_path / "photos"), actors=1)
    # No batch came back, so nothing was stored, not even the broken file's failure.
    info = store.collection("c")
    assert (info.count, len(store.failures(info.id))) == (0, 0)


def test_batches_committed_before_the_actors_die_stay_and_a_rerun_resumes(
    tmp_path: Path, ray_address: str, settings: Settings
) -> None:
    """The actor killed mid-run (as by the OOM killer) and its restart unable to load the model: the run stops
    with the cause, the batch committed before stays stored and indexed, and a re-run reads only the rest."""
    import open_clip
    import ray
    import torch

    from app.variants import get_variant

    paths = make_photos(tmp_path / "photos")
    web = tmp_path / "web"
    web.mkdir()
    for i in range(8):
        (web / f"w{i}.jpg").write_bytes(encode(photo(120 + 4 * i, 100, seed=4000 + i), "JPEG"))
    release = threading.Event()

    class HeldHandler(SimpleHTTPRequestHandler):
        """Serves the folder once released: the actor stays busy on the URL batches until the test has killed it."""

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            release.wait(timeout=300)
            super().do_GET()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(HeldHandler, directory=str(web)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    # One batch of 4 files, then two batches of URLs: with batches of 4, the files are committed first.
    lines = ["path"] + [str(p) for p in paths[:4]] + [f"{base}/w{i}.jpg" for i in range(8)]
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    weights = tmp_path / "t16.pt"
    model = open_clip.create_model(get_variant(TEST_MODEL).open_clip_name, pretrained=None)
    torch.save(model.state_dict(), weights)
    from_file = settings.model_copy(update={
        "weights": str(weights), "url_allow_http": True, "url_allow_ip_hosts": True, "url_allow_private_hosts": True,
        # The held URLs must still be in flight when the actor is killed, however slow the machine:
        # with the default 15 s read timeout, a slow CI run saw them fail first and commit a batch of failures.
        "url_read_timeout": 600.0,
    })
    store = open_store(tmp_path / "store")
    committed: list[int] = []

    def kill_the_actor_after_the_first_batch(collection: str, stored: int, failed: int) -> None:
        committed.append(stored)
        if len(committed) == 1:
            weights.unlink()  # the restarted actor cannot load the model any more
            # The GCS actor table (no dashboard here for ray.util.state): the pool's live actor and its pid.
            table = list(ray._private.state.actors(actor_state_name="ALIVE").values())
            pids = [actor["Pid"] for actor in table if "MapWorker" in actor["ActorClassName"]]
            assert len(pids) == 1, [actor["ActorClassName"] for actor in table]
            os.kill(pids[0], signal.SIGKILL)

    ingestor = RayIngestor(
        store=store, settings=from_file, model=TEST_MODEL, batch_size=4, options=RayOptions(actors=1),
        on_batch=kill_the_actor_after_the_first_batch,
    )
    try:
        with pytest.raises(RayIngestError, match="re-run to resume"):
            ingestor.run(manifest_items(tmp_path / "manifest.csv"), collection="c")
    finally:
        release.set()
    try:
        assert committed == [4]
        info = store.collection("c")
        assert (info.count, info.indexed) == (4, 4)
        # The checkpoint on the way out holds the committed batch: a fresh process finds it indexed.
        assert open_store(tmp_path / "store").collection("c").indexed == 4

        torch.save(model.state_dict(), weights)
        again = ray_run(store, from_file, manifest_items(tmp_path / "manifest.csv"))
        assert (again.unchanged, again.added, again.failed) == (4, 8, [])
        assert store.collection("c").count == 12
    finally:
        httpd.shutdown()


def test_connect_refuses_a_process_not_prepared_for_a_loopback_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    """No library call changes the process environment; connect() says what is missing instead of listening wide."""
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    with pytest.raises(RaySetupError, match=r"missing: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER\).*prepare_ray_process"):
        connect(None)
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ


@pytest.fixture()
def web_folder(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loopback HTTP server over a folder of photos."""
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "remote.jpg").write_bytes(encode(photo(200, 160, seed=555), "JPEG"))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(tmp_path / "web")))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", tmp_path / "web"
    finally:
        httpd.shutdown()


def test_one_command_ingests_a_manifest_through_ray_into_postgresql(
    tmp_path: Path, ray_address: str, encoder: PEEncoder, settings: Settings, web_folder: tuple[str, Path],
    postgres_url: str,
) -> None:
    """The issue's finish line: the CLI, Ray, metadata in PostgreSQL, the single-machine path's answers."""
    base, web = web_folder
    paths = make_photos(tmp_path / "photos")
    lines = ["path,label"] + [f"{p},local{i}" for i, p in enumerate(paths[:5])] + [f"{base}/remote.jpg,web", f"{base}/gone.jpg,web"]
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    env = {
        **os.environ, "PE_SEARCH_DATA_DIR": str(tmp_path / "data"), "PE_SEARCH_DATABASE_URL": postgres_url,
        "PE_SEARCH_WEIGHTS": "random", "PE_SEARCH_MODEL": TEST_MODEL, "PE_SEARCH_DEVICE": "cpu", "HF_HUB_OFFLINE": "1",
        "PE_SEARCH_URL_ALLOW_HTTP": "true", "PE_SEARCH_URL_ALLOW_IP_HOSTS": "true", "PE_SEARCH_URL_ALLOW_PRIVATE_HOSTS": "true",
    }
    command = [
        sys.executable, "-m", "app.cli", "ingest", "--manifest", str(tmp_path / "manifest.csv"), "--collection", "c",
        "--engine", "ray", "--ray-address", ray_address, "--ray-actors", "1", "--batch-size", "4", "--json", "--quiet",
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert (summary["added"], summary["duplicates"], summary["failed"]) == (6, 0, 1)
    assert "HTTP 404" in summary["failures"][0]["reason"] and summary["failures"][0]["uri"].endswith("/gone.jpg")

    store = VectorStore(engine=create_db_engine(postgres_url), index_dir=tmp_path / "data" / "indexes").open()
    local = open_store(tmp_path / "local")
    local_summary = local_run(local, encoder, settings, manifest_items(tmp_path / "manifest.csv"))
    assert {k: v for k, v in summary.items() if k not in ("seconds", "images_per_second")} == without_timing(local_summary)
    got, expected = contents(store), contents(local)
    assert got["info"] == expected["info"] == (TEST_MODEL, 512, 6, 6)
    assert got["images"] == expected["images"] and got["sources"] == expected["sources"]
    metas = {uri: meta for uri, *_, meta in got["images"].values()}
    assert metas[f"{base}/remote.jpg"] == {"label": "web"} and metas[str(paths[2].resolve())] == {"label": "local2"}
    queries = [encoder.embed_texts(["a photo of a red square"])[0]]
    queries += list(encoder.embed_images([decode_image(p.read_bytes()) for p in (paths[2], web / "remote.jpg")]))
    for query in queries:
        want, have = ranked(local, query), ranked(store, query)
        assert [uri for uri, _ in have] == [uri for uri, _ in want]
        np.testing.assert_allclose([s for _, s in have], [s for _, s in want], atol=1e-5)
    assert ranked(store, queries[2])[0] == (f"{base}/remote.jpg", pytest.approx(1.0, abs=1e-4))
    store.engine.dispose()


def test_without_ray_or_pyarrow_the_errors_say_what_to_install(tmp_path: Path, monkeypatch, capsys) -> None:
    # As on an install without the extra: the imports fail (sys.modules entries of None block them).
    for name in ("ray", "pyarrow", "pyarrow.parquet"):
        monkeypatch.setitem(sys.modules, name, None)
    (tmp_path / "manifest.parquet").write_bytes(b"PAR1")
    with pytest.raises(SourceError, match=r"reading Parquet needs pyarrow; install it with pip install 'pe-search\[ray\]'"):
        list(manifest_items(tmp_path / "manifest.parquet"))

    make_photos(tmp_path / "photos")
    monkeypatch.setenv("PE_SEARCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PE_SEARCH_WEIGHTS", "random")
    code = cli_main(["ingest", str(tmp_path / "photos"), "--engine", "ray", "--quiet"])
    assert code == 2 and "the Ray engine needs Ray: pip install 'pe-search[ray]'" in capsys.readouterr().err


def test_parquet_binary_columns_stay_out_of_the_metadata(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A Hugging Face-style manifest carries the image bytes: the metadata keeps the other columns, not a copy of them."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    paths = make_photos(tmp_path / "photos")
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "path": [str(p) for p in paths[:2]],
        "label": ["cat", "dog"],
        "image": pa.array([{"bytes": p.read_bytes(), "path": p.name} for p in paths[:2]], type=image_type),
        "thumbnail": pa.array([b"\x89PNG", b"\xff\xd8"], type=pa.binary()),
        "tags": [["a", "b"], []],
    })
    pq.write_table(table, tmp_path / "manifest.parquet")

    with caplog.at_level(logging.INFO, logger="app.ingest.sources"):
        items = list(manifest_items(tmp_path / "manifest.parquet"))

    assert [item.uri for item in items] == [str(p.resolve()) for p in paths[:2]]
    assert [item.metadata for item in items] == [{"label": "cat", "tags": ["a", "b"]}, {"label": "dog", "tags": []}]
    assert "binary columns left out of the metadata: image, thumbnail" in caplog.text


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--ray-cpus-per-actor", "0", "argument --ray-cpus-per-actor: must be above 0, got 0"),
        ("--ray-cpus-per-actor", "nan", "argument --ray-cpus-per-actor: must be above 0, got nan"),
        ("--ray-cpus-per-actor", "one", "argument --ray-cpus-per-actor: expected a number, got 'one'"),
        ("--ray-actors", "-2", "argument --ray-actors: must be at least 1, got -2"),
        ("--ray-actors", "1.5", "argument --ray-actors: expected a whole number, got '1.5'"),
    ],
)
def test_ray_options_out_of_range_are_refused_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, message: str
) -> None:
    make_photos(tmp_path / "photos")
    with pytest.raises(SystemExit) as exited:
        cli_main(["ingest", str(tmp_path / "photos"), "--engine", "ray", option, value])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
