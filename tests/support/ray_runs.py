"""Instruments for the Ray engine's tests: photos and stores, bounded waits, held loopback URLs, actors killed by
id, a node to lose.

Every wait here has a deadline and, when it passes, fails with what Ray had in flight; nothing
sleeps for long (polls of 50 ms). Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from sqlalchemy import select

from app.ingest.pipeline import Ingestor
from app.ingest.ray_engine import RayIngestor, RayOptions
from app.media.fetch import UrlFetcher
from app.model.encoder import PEEncoder
from app.settings import Settings
from index.db import create_db_engine
from index.models import Image, Source
from index.store import VectorStore
from tests.support.constants import TEST_MODEL
from tests.support.images import encode, photo

POLL_S = 0.05
# A test's own waits: far above what they need on a busy 2-core machine, far below the test's timeout.
WAIT_S = 60.0


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


def local_run(  # noqa: ANN201 - IngestSummary
    store: VectorStore,
    encoder: PEEncoder,
    settings: Settings,
    items,
    collection: str = "c",  # noqa: ANN001
):
    fetcher = UrlFetcher(settings.url_policy())
    ingestor = Ingestor(store=store, encoder=encoder, fetcher=fetcher, batch_size=4, workers=2)
    return ingestor.run(items, collection=collection)


def ray_run(  # noqa: ANN201 - IngestSummary
    store: VectorStore,
    settings: Settings,
    items,
    collection: str = "c",
    actors: int | None = None,  # noqa: ANN001
):
    options = RayOptions(actors=actors)
    ingestor = RayIngestor(store=store, settings=settings, model=TEST_MODEL, batch_size=4, options=options)
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
            "vectors": {i.sha256: store.vector(i.id)[1] for i in images},
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


def ray_state() -> str:
    """What Ray has in flight, for a failure message: nodes, and this job's actors with their states and pids."""
    try:
        import ray

        if not ray.is_initialized():
            return "Ray is not initialized"
        lines = [f"node {n['NodeManagerAddress']} alive={n['Alive']} {n.get('Resources')}" for n in ray.nodes()]
        job = ray.get_runtime_context().get_job_id()
        for actor in ray._private.state.actors().values():
            if actor.get("JobID") == job:
                lines.append(
                    f"actor {actor['ActorID'][:12]} {actor['ActorClassName']} {actor['State']} pid={actor['Pid']} "
                    f"restarts={actor['NumRestarts']}"
                )
        return "\n".join(lines)
    except Exception as exc:  # noqa: BLE001 - a diagnostic must never hide the failure it describes
        return f"Ray state unavailable: {exc!r}"


def wait_for(condition: Callable[[], object], what: str, timeout: float = WAIT_S) -> object:
    """Poll `condition` until it is true; past `timeout`, fail with `what` and Ray's state."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}\n{ray_state()}")
        time.sleep(POLL_S)
    return value


class HeldServer:
    """A loopback HTTP server over a folder whose answers wait for `release`; `requested` says one is waiting.

    An actor fetching from it is busy, as on a slow site, for exactly as long as the test wants.
    """

    def __init__(self, folder: Path) -> None:
        self.requested, self.release = threading.Event(), threading.Event()
        held = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                held.requested.set()
                held.release.wait(timeout=300)  # bounded even if a test forgets to release
                super().do_GET()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(folder)))
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def held_web(folder: Path) -> HeldServer:
    """8 JPEGs, w0.jpg to w7.jpg, behind a HeldServer."""
    folder.mkdir()
    for i in range(8):
        (folder / f"w{i}.jpg").write_bytes(encode(photo(120 + 4 * i, 100, seed=4000 + i), "JPEG"))
    return HeldServer(folder)


def pool_actor_ids(states: tuple[str, ...] = ("ALIVE",)) -> list[str]:
    """The ids of this job's encoder actors (Ray Data's MapWorker around EmbedActor) in `states`, from Ray's table."""
    import ray

    job = ray.get_runtime_context().get_job_id()
    table = ray._private.state.actors().values()  # ray.util.state would need a dashboard
    ours = [a for a in table if a["JobID"] == job and "EmbedActor" in a["ActorClassName"]]
    return [a["ActorID"] for a in ours if a["State"] in states]


def kill_actor(actor_id: str, *, restart: bool) -> None:
    """ray.kill by id, as the OOM killer or a crash would end it: with `restart`, Ray restarts it as for any death."""
    import ray

    # The pool's actors are Ray Data's, unnamed; this job's core worker hands out a handle to one by its id.
    handle = ray._private.worker.global_worker.core_worker.get_actor_handle(ray.ActorID.from_hex(actor_id))
    ray.kill(handle, no_restart=not restart)


class ExtraNode:
    """A second Ray node on this machine (loopback only), joined to the test instance, which the test can lose.

    Started as Ray's own multi-node test cluster (ray.cluster_utils) starts its worker nodes: `ray start`
    refuses to join a loopback-only instance, which Ray treats as a single-machine one.
    """

    def __init__(self, gcs_address: str, *, num_cpus: int) -> None:
        import ray
        from ray._private.node import Node
        from ray._private.parameter import RayParams

        before = {n["NodeID"] for n in ray.nodes()}
        params = RayParams(
            gcs_address=gcs_address,
            node_ip_address="127.0.0.1",
            num_cpus=num_cpus,
            num_gpus=0,
            object_store_memory=100 * 1024**2,
            min_worker_port=0,
            max_worker_port=0,
            node_manager_port=0,
            include_log_monitor=False,
        )
        params.dashboard_agent_listen_port = None  # a free port, not the head's agent's
        self.node = Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
        self.node_id = wait_for(
            lambda: next((n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] not in before), None),
            "the extra node joined",
        )
        address = next(n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == self.node_id)
        assert address == "127.0.0.1", address
        self.lost = False

    def lose(self) -> None:
        """The node goes, as when a cluster scales down or a machine is preempted: its raylet is told to stop, Ray
        hears it go and restarts its actors elsewhere, if there is room (killed outright after a grace period)."""
        if not self.lost:
            self.lost = True
            self.node.kill_all_processes(check_alive=False, allow_graceful=True, wait=True)


@contextlib.contextmanager
def extra_node(gcs_address: str, *, num_cpus: int) -> Iterator[ExtraNode]:
    node = ExtraNode(gcs_address, num_cpus=num_cpus)
    try:
        yield node
    finally:
        node.lose()


def arm_state_dump(seconds: float) -> threading.Timer:
    """Print Ray's state to stderr after `seconds` (the test's timeout less a margin), so a timeout shows it."""

    def dump() -> None:
        print(f"\n--- Ray state shortly before the test's timeout ---\n{ray_state()}", file=sys.stderr)

    timer = threading.Timer(seconds, dump)
    timer.daemon = True
    timer.start()
    return timer
