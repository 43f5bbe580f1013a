"""The Ray engine on a real local Ray instance: the same store as the local engine, from every kind of source.

One Ray instance serves the module (2 CPUs, a small object store, on loopback only); each run
starts its own pool of encoder actors (the real PE-Core architecture, random weights), as a
user's run does. Without Ray the module is skipped, unless PE_SEARCH_REQUIRE_RAY is set (CI sets
it, so a missing Ray fails the run). Each test has a time limit, and when one passes it, the
failure shows the threads' stacks and what Ray had in flight: a hang fails fast, it never eats CI.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from app.cli import main as cli_main
from app.errors import RayIngestError, RaySetupError
from app.ingest.pipeline import Ingestor
from app.ingest.ray_engine import RayIngestor, RayOptions
from app.ingest.ray_setup import connect
from app.ingest.ray_watch import PoolState, StallWatch
from app.ingest.sources import SourceError, folder_items, manifest_items, object_items
from app.media.decode import decode_image
from app.media.fetch import UrlFetcher
from app.media.objects import ObjectStorage
from app.model.encoder import PEEncoder
from app.settings import Settings
from index.db import create_db_engine
from index.store import VectorStore
from tests.support.constants import TEST_MODEL
from tests.support.images import encode, photo
from tests.support.objects import credentials_in_env, s3_server
from tests.support.ray_runs import (
    HeldServer,
    arm_state_dump,
    contents,
    extra_node,
    held_web,
    kill_actor,
    local_run,
    make_photos,
    open_store,
    pool_actor_ids,
    ranked,
    ray_run,
    ray_state,
    wait_for,
    without_timing,
)

REPO = Path(__file__).resolve().parent.parent
# Far above what any test here needs on a busy 2-core machine (the slowest takes about a minute).
RAY_TEST_TIMEOUT_S = 240
# The stall timeout of the tests that stop a pool: short, since what they wait for never comes.
STALL_S = 5.0
pytestmark = [
    pytest.mark.ray,
    # Ray Data warns about its own deprecated options whenever it copies its context; nothing of ours.
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context"),
    pytest.mark.timeout(RAY_TEST_TIMEOUT_S),
]


@pytest.fixture(scope="module")
def settings(settings: Settings) -> Settings:
    """The session's settings in fp32: on a CPU with native bf16, `auto` weighs bf16 per process against a guard
    that random weights sit near, so the driver's encoder and an actor could differ (by ~1e-3, 1 run in 20 here)."""
    return settings.model_copy(update={"image_precision": "fp32", "text_precision": "fp32"})


@pytest.fixture(scope="module")
def encoder(settings: Settings) -> PEEncoder:
    """The local engine's encoder, on the same fp32 settings as the actors."""
    from app.model.registry import ModelRegistry

    return ModelRegistry(settings).get()


@pytest.fixture(autouse=True)
def ray_state_before_a_timeout() -> Iterator[None]:
    """pytest-timeout prints the threads' stacks; this prints Ray's nodes and actors shortly before it fires."""
    timer = arm_state_dump(RAY_TEST_TIMEOUT_S - 15)
    yield
    timer.cancel()


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    if importlib.util.find_spec("ray") is None and not os.environ.get("PE_SEARCH_REQUIRE_RAY"):
        pytest.skip("Ray is not installed (pip install 'pe-search[ray]')")
    # conftest prepared this process for Ray (loopback only, no usage stats) before anything imported it.
    # The loopback S3 server's dummy credentials are in the environment before Ray starts, so its
    # workers inherit them as a cluster's nodes would have their own.
    with credentials_in_env():
        started = connect(None, num_cpus=2, object_store_memory=300 * 1024**2)
        import ray

        address = ray.get_runtime_context().gcs_address
        # Tests talk to loopback only: the instance, and the CLI joining it below, must not use the machine's address.
        assert address.startswith("127.0.0.1:"), address
        assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
        yield address
        if started:
            ray.shutdown()


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


def test_ray_engine_reads_a_bucket_as_the_local_engine_does(
    tmp_path: Path, ray_address: str, encoder: PEEncoder, settings: Settings
) -> None:
    make_photos(tmp_path / "photos")
    with s3_server(tmp_path) as s3:
        client = s3.client()
        client.create_bucket(Bucket="ray-photos")
        for path in sorted((tmp_path / "photos").rglob("*")):
            if path.is_file():
                client.put_object(Bucket="ray-photos", Key=f"lib/{path.name}", Body=path.read_bytes())
        bucket = settings.model_copy(update={"s3_endpoint_url": s3.endpoint, "object_retries": 1})
        objects = ObjectStorage(bucket.object_policy())
        local, distributed = open_store(tmp_path / "local"), open_store(tmp_path / "ray")
        local_summary = Ingestor(
            store=local, encoder=encoder, fetcher=UrlFetcher(bucket.url_policy()), objects=objects, batch_size=4
        ).run(object_items("s3://ray-photos/lib", objects), collection="c")
        ray_summary = ray_run(distributed, bucket, object_items("s3://ray-photos/lib", objects))
        rerun = ray_run(distributed, bucket, object_items("s3://ray-photos/lib", objects))
    assert without_timing(ray_summary) == without_timing(local_summary)
    assert ray_summary.added == 10 and [uri for uri, _ in ray_summary.failed] == ["s3://ray-photos/lib/broken.jpg"]
    expected, got = contents(local), contents(distributed)
    assert got["images"] == expected["images"] and got["sources"] == expected["sources"]
    for sha, vector in expected["vectors"].items():
        np.testing.assert_allclose(got["vectors"][sha], vector, atol=1e-5)
    assert (rerun.unchanged, rerun.added) == (11, 0)  # skipped by ETag and size, unread


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
    table = pa.table(
        {
            "path": rows,
            "label": ["cat", "dog", "cat", "bird", "none", "url"],
            "score": [0.5, float("nan"), 2.0, 3.5, 0.0, 1.0],
            "rank": [1, 2, 3, 4, 5, 6],
        }
    )
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


@pytest.fixture()
def held(tmp_path: Path) -> Iterator[HeldServer]:
    """8 JPEGs behind a loopback server whose answers wait until the test releases them."""
    server = held_web(tmp_path / "web")
    try:
        yield server
    finally:
        server.close()


def test_batches_committed_before_the_actors_die_stay_and_a_rerun_resumes(
    tmp_path: Path, ray_address: str, settings: Settings, held: HeldServer
) -> None:
    """The actor killed mid-batch (as by the OOM killer) and its restart unable to load the model: the run ends
    with the cause, the batch committed before stays stored and indexed, and a re-run reads only the rest."""
    import open_clip
    import torch

    from app.model.variants import get_variant

    paths, server = make_photos(tmp_path / "photos"), held
    # One batch of 4 files, then two of held URLs: one actor runs its batches in order, so the files come first.
    lines = ["path"] + [str(p) for p in paths[:4]] + [f"{server.base}/w{i}.jpg" for i in range(8)]
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    weights = tmp_path / "t16.pt"
    model = open_clip.create_model(get_variant(TEST_MODEL).open_clip_name, pretrained=None)
    torch.save(model.state_dict(), weights)
    # A held URL must outlast the kill however slow the machine (at the default 15 s read timeout, a slow CI
    # once saw it fail first and commit a batch of failures); the server lets go when the run has ended.
    from_file = settings.model_copy(update={"weights": str(weights), "url_read_timeout": 600.0})
    store = open_store(tmp_path / "store")
    committed: list[int] = []

    def kill_the_actor_while_it_fetches_the_second_batch(collection: str, stored: int, failed: int) -> None:
        committed.append(stored)
        if len(committed) == 1:
            wait_for(server.requested.is_set, "the actor fetching a held URL of the second batch")
            weights.unlink()  # the restarted actor cannot load the model any more
            ids = wait_for(pool_actor_ids, "the pool's actor alive")
            assert len(ids) == 1, ray_state()
            kill_actor(ids[0], restart=True)

    ingestor = RayIngestor(
        store=store,
        settings=from_file,
        model=TEST_MODEL,
        batch_size=4,
        # A stall timeout well above a restart's model load here, so that Ray's own outcome shows.
        options=RayOptions(actors=1, stall_timeout=60),
        on_batch=kill_the_actor_while_it_fetches_the_second_batch,
    )
    try:
        # Ray's own error names the cause; where Ray would wait instead (as the issue saw), the watchdog ends it.
        with pytest.raises(RayIngestError, match="re-run to resume: .*(Checkpoint file not found|stalled: no batch)"):
            ingestor.run(manifest_items(tmp_path / "manifest.csv"), collection="c")
    finally:
        server.release.set()
    assert committed == [4]
    info = store.collection("c")
    assert (info.count, info.indexed) == (4, 4)
    # The checkpoint on the way out holds the committed batch: a fresh process finds it indexed.
    assert open_store(tmp_path / "store").collection("c").indexed == 4

    torch.save(model.state_dict(), weights)
    again = ray_run(store, from_file, manifest_items(tmp_path / "manifest.csv"))
    assert (again.unchanged, again.added, again.failed) == (4, 8, [])
    assert store.collection("c").count == 12


def test_a_pool_whose_actor_cannot_come_back_ends_the_run_after_the_stall_timeout_and_a_rerun_resumes(
    tmp_path: Path, ray_address: str, settings: Settings, held: HeldServer
) -> None:
    """The node of the only actor lost, and no room left for its restart: Ray would wait for ever. The watchdog
    cancels the run once no batch came for the stall timeout, with what it saw; the batch committed before stays,
    and a re-run, with room again, reads only the rest."""
    from ray.util.placement_group import placement_group, remove_placement_group

    paths, server = make_photos(tmp_path / "photos"), held
    lines = ["path"] + [str(p) for p in paths[:4]] + [f"{server.base}/w{i}.jpg" for i in range(8)]
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    slow_web = settings.model_copy(update={"url_read_timeout": 600.0})
    store = open_store(tmp_path / "store")
    committed: list[int] = []
    # The head's 2 CPUs taken: the pool's actor can only start on the extra node, and restart nowhere once it is gone.
    head_full = placement_group([{"CPU": 2}])
    try:
        wait_for(lambda: head_full.wait(timeout_seconds=1), "the head's CPUs reserved")
        with extra_node(ray_address, num_cpus=1) as node:

            def lose_the_node_while_the_actor_fetches_the_second_batch(collection: str, stored: int, _: int) -> None:
                committed.append(stored)
                if len(committed) == 1:
                    wait_for(server.requested.is_set, "the actor fetching a held URL of the second batch")
                    node.lose()

            ingestor = RayIngestor(
                store=store,
                settings=slow_web,
                model=TEST_MODEL,
                batch_size=4,
                options=RayOptions(actors=1, stall_timeout=STALL_S),
                on_batch=lose_the_node_while_the_actor_fetches_the_second_batch,
            )
            started = time.monotonic()
            with pytest.raises(
                RayIngestError,
                match=(
                    r"re-run to resume: stalled: no batch completed in \d+ s while 0 of 1 actors alive \(1 restarting, "
                    r"0 starting\), [12] batch(es)? in flight \(--ray-stall-timeout 5\)"
                ),
            ):
                ingestor.run(manifest_items(tmp_path / "manifest.csv"), collection="c")
            waited = time.monotonic() - started
    finally:
        server.release.set()
        remove_placement_group(head_full)
    assert committed == [4]
    assert waited >= STALL_S
    info = store.collection("c")
    assert (info.count, info.indexed, store.failures(info.id)) == (4, 4, [])
    # Nothing of the cancelled pool lingers: no actor of this job is alive or restarting.
    wait_for(lambda: not pool_actor_ids(states=("ALIVE", "RESTARTING", "PENDING_CREATION")), "the pool gone")

    again = ray_run(store, slow_web, manifest_items(tmp_path / "manifest.csv"))
    assert (again.unchanged, again.added, again.failed) == (4, 8, [])
    assert store.collection("c").count == 12


def test_the_stall_watch_cancels_a_pool_only_when_it_has_no_live_way_forward() -> None:
    """Against a clock the test moves: slow but alive goes on for ever; dead or restarting ends after the timeout."""
    now = [0.0]

    def watch(**kwargs: object) -> tuple[StallWatch, object]:
        w = StallWatch(timeout=60, items=12, actors=2, clock=lambda: now[0], **kwargs)

        def at(t: float, *state: int, gcs: int | None = None) -> str | None:
            now[0] = t
            return w.check(PoolState(*state, gcs_alive=gcs))

        return w, at

    now[0] = 0.0
    _, at = watch()  # PoolState(alive, restarting, pending, in flight, finished tasks)
    assert at(5000, 2, 0, 0, 2, 0) is None  # both alive, a batch slower than any timeout: never a stall
    now[0] = 0.0
    w, at = watch()
    assert at(10, 2, 0, 0, 2, 0) is None
    assert at(50, 1, 1, 0, 2, 1) is None  # one restarting, the other finished a batch at 50 s
    w.received(4)
    assert at(109, 1, 1, 0, 2, 1) is None  # 59 s without a batch
    assert at(111, 1, 1, 0, 2, 1) == (
        "stalled: no batch completed in 61 s while 1 of 2 actors alive (1 restarting, 0 starting), "
        "2 batches in flight (--ray-stall-timeout 60)"
    )
    now[0] = 0.0
    _, at = watch()
    assert at(239, 0, 0, 2, 0, 0) is None  # starting (model loads, maybe a download): 4 timeouts
    assert "no encoder actor came up in 240 s (0 of 2 actors alive (0 restarting, 2 starting)" in at(241, 0, 0, 2, 0, 0)
    now[0] = 0.0
    w, at = watch()
    w.received(4)  # a batch came back, from an actor up for less than the watch's 0.5 s between checks
    assert "stalled: no batch completed in 61 s while 0 of 2 actors alive (1 restarting" in at(61, 0, 1, 0, 2, 0)
    now[0] = 0.0
    w, at = watch(gcs_alive=lambda: 0)
    assert at(1, 1, 0, 0, 1, 0) is None
    assert "1 of 2 actors alive" in at(70, 1, 0, 0, 1, 0) and "Ray's actor table has 0 alive" in at(80, 1, 0, 0, 1, 0)
    assert at(500, 0, 0, 0, 0, 1) is None  # nothing in flight, no actor starting: the pool is done, not stalled


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
    tmp_path: Path,
    ray_address: str,
    encoder: PEEncoder,
    settings: Settings,
    web_folder: tuple[str, Path],
    postgres_url: str,
) -> None:
    """The issue's finish line: the CLI, Ray, metadata in PostgreSQL, the single-machine path's answers."""
    base, web = web_folder
    paths = make_photos(tmp_path / "photos")
    lines = (
        ["path,label"]
        + [f"{p},local{i}" for i, p in enumerate(paths[:5])]
        + [f"{base}/remote.jpg,web", f"{base}/gone.jpg,web"]
    )
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    env = {
        **os.environ,
        "PE_SEARCH_DATA_DIR": str(tmp_path / "data"),
        "PE_SEARCH_DATABASE_URL": postgres_url,
        "PE_SEARCH_WEIGHTS": "random",
        "PE_SEARCH_MODEL": TEST_MODEL,
        "PE_SEARCH_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        "PE_SEARCH_URL_ALLOW_HTTP": "true",
        "PE_SEARCH_URL_ALLOW_IP_HOSTS": "true",
        "PE_SEARCH_URL_ALLOW_PRIVATE_HOSTS": "true",
        "PE_SEARCH_IMAGE_PRECISION": "fp32",
        "PE_SEARCH_TEXT_PRECISION": "fp32",  # as `encoder`
    }
    command = [
        sys.executable,
        "-m",
        "app.cli",
        "ingest",
        "--manifest",
        str(tmp_path / "manifest.csv"),
        "--collection",
        "c",
        "--engine",
        "ray",
        "--ray-address",
        ray_address,
        "--ray-actors",
        "1",
        "--batch-size",
        "4",
        "--json",
        "--quiet",
    ]
    # utf-8: Ray Data prints a check mark when a dataset finishes, whatever the locale says.
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert (summary["added"], summary["duplicates"], summary["failed"]) == (6, 0, 1)
    assert "HTTP 404" in summary["failures"][0]["reason"] and summary["failures"][0]["uri"].endswith("/gone.jpg")

    store = VectorStore(engine=create_db_engine(postgres_url), index_dir=tmp_path / "data" / "indexes").open()
    local = open_store(tmp_path / "local")
    local_summary = local_run(local, encoder, settings, manifest_items(tmp_path / "manifest.csv"))
    assert {k: v for k, v in summary.items() if k not in ("seconds", "images_per_second")} == without_timing(
        local_summary
    )
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
    with pytest.raises(
        SourceError, match=r"reading Parquet needs pyarrow; install it with pip install 'pe-search\[ray\]'"
    ):
        list(manifest_items(tmp_path / "manifest.parquet"))

    make_photos(tmp_path / "photos")
    monkeypatch.setenv("PE_SEARCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PE_SEARCH_WEIGHTS", "random")
    code = cli_main(["ingest", str(tmp_path / "photos"), "--engine", "ray", "--quiet"])
    assert code == 2 and "the Ray engine needs Ray: pip install 'pe-search[ray]'" in capsys.readouterr().err


def test_parquet_binary_columns_stay_out_of_the_metadata(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A Hugging Face-style manifest carries the image bytes: the metadata keeps the other columns, not a copy."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    paths = make_photos(tmp_path / "photos")
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "path": [str(p) for p in paths[:2]],
            "label": ["cat", "dog"],
            "image": pa.array([{"bytes": p.read_bytes(), "path": p.name} for p in paths[:2]], type=image_type),
            "thumbnail": pa.array([b"\x89PNG", b"\xff\xd8"], type=pa.binary()),
            "tags": [["a", "b"], []],
        }
    )
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
        ("--ray-stall-timeout", "0", "argument --ray-stall-timeout: must be above 0, got 0"),
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
