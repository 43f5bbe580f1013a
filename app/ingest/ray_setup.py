"""Ray's process environment, connection and dataset options: a local instance on 127.0.0.1 only, no usage stats.

Ray reads two switches from the environment, and one of them only when it is first imported, so
they cannot be set from inside a library call that may run after some other code imported Ray:

- `RAY_USAGE_STATS_ENABLED=0`: no usage report leaves the machine (and none needs the network).
  A local instance's own processes (GCS, raylet, dashboard) inherit it from this process.
- `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`: on Linux, Ray replaces a loopback node address with the
  machine's own unless this is off; it reads it when `ray` is first imported.

The program (the CLI, the test session) calls `prepare_ray_process` once at its start,
before anything imports Ray; `connect` checks that it did rather than changing the environment.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from functools import cache
from typing import Any

from app.errors import RaySetupError, RayUnavailableError

USAGE_STATS = "RAY_USAGE_STATS_ENABLED"
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def ray_process_environment(*, local: bool) -> dict[str, str]:
    """The variables Ray must find in this process before it is first imported: a local instance's, or a driver's."""
    env = {USAGE_STATS: "0"}
    if local:
        env[LOOPBACK_SWITCH] = "0"
    return env


def prepare_ray_process(*, local: bool) -> None:
    """Set `ray_process_environment` in this process: call once at process start, before Ray is imported.

    A usage-stats choice already in the environment is the user's and stays; the loopback switch
    is forced for a local instance, which must never listen on the machine's network address.
    """
    env = ray_process_environment(local=local)
    os.environ.setdefault(USAGE_STATS, env.pop(USAGE_STATS))
    os.environ.update(env)


def _check_environment(*, local: bool) -> None:
    missing = [f"{name}" for name in ray_process_environment(local=local) if name not in os.environ]
    if local and LOOPBACK_SWITCH in os.environ and os.environ[LOOPBACK_SWITCH] != "0":
        missing.append(f"{LOOPBACK_SWITCH}=0")
    ray_constants = sys.modules.get("ray._private.ray_constants")
    if local and getattr(ray_constants, "ENABLE_RAY_CLUSTER", False):
        missing.append(f"{LOOPBACK_SWITCH}=0 before Ray was first imported")
    if missing:
        raise RaySetupError(
            f"Ray was not prepared for this process (missing: {', '.join(missing)}): call "
            "app.ingest.ray_setup.prepare_ray_process() at process start, before anything imports Ray"
        )


def connect(address: str | None = None, **local_options: Any) -> bool:
    """Join the cluster at `address`, or start a local Ray instance; False if this process was already connected.

    A local instance serves this machine only: all its processes listen on 127.0.0.1, not on
    the machine's network address. `local_options` (num_cpus, object_store_memory...) apply
    only to a local start. Needs `prepare_ray_process` first (RaySetupError otherwise).
    """
    _check_environment(local=address is None)
    try:
        import ray
    except ImportError:
        raise RayUnavailableError() from None
    if ray.is_initialized():
        return False
    options = {"_node_ip_address": "127.0.0.1", **local_options} if address is None else {}
    # No runtime_env for the workers: they need neither switch. A local instance's workers descend from this
    # process and inherit both; on a cluster, usage reports are the head's (`ray start --disable-usage-stats`),
    # and a job-level env would cost each actor a worker start of its own (about 0.5 s here).
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, **options)
    return True


def cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


@cache
def in_order_actor_tasks() -> dict[str, Any]:
    """Actor tasks run in the order given, where this Ray has the option (recent Ray Data picks out-of-order).

    Results come back in input order anyway; run in order, each batch is committed as soon as it is done,
    instead of waiting behind an earlier one still queued on the same actor (and lost with it if that dies).
    """
    import ray

    try:
        # Validates the option, starts nothing; Ray's stubs do not list it yet, hence the ignore.
        ray.remote(allow_out_of_order_execution=False)(type("_Probe", (), {}))  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return {}
    return {"allow_out_of_order_execution": False}


@contextlib.contextmanager
def data_context(*, preserve_order: bool, progress_bars: bool) -> Iterator[None]:
    """Ray Data options for the datasets built inside; each dataset keeps a copy, the process default is restored."""
    from ray.data import DataContext

    context = DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars)
    callbacks = getattr(context, "custom_execution_callback_classes", None)
    # In order, so duplicates resolve to the same first uri and ids come out as in the local engine.
    context.execution_options.preserve_order = preserve_order
    context.enable_progress_bars = progress_bars
    if callbacks is not None:  # the engine's stall watchdog (ray_watch), in Ray Data's loop
        from app.ingest.ray_callback import WatchCallback

        context.custom_execution_callback_classes = [*callbacks, WatchCallback]
    try:
        yield
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved
        if callbacks is not None:
            context.custom_execution_callback_classes = callbacks
