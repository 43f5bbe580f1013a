"""Watched folders: file-system events (watchfiles) turned into settled batches of changes.

Editors and copy tools write a file in several steps, so an event means "look again soon",
not "read now": a changed file is handed on only once its size and mtime have stayed the same
across one settle interval and its mtime is at least that old. A file still being written
keeps changing and waits; one deleted before it settles is reported as deleted.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from app.ingest.sources import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

Stat = tuple[int, int]  # (size, mtime in ns)


@dataclass
class Changes:
    upserts: list[Path] = field(default_factory=list)
    deletes: list[Path] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.upserts or self.deletes)


def is_image(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _stat(path: Path) -> Stat | None:
    try:
        result = os.stat(path)
    except OSError:
        return None
    return result.st_size, result.st_mtime_ns


class Settler:
    """Which touched paths are ready: unchanged since the last look, and quiet for `settle_s`."""

    def __init__(self, settle_s: float, *, stat: Callable[[Path], Stat | None] = _stat) -> None:
        self.settle_ns = int(settle_s * 1e9)
        self._stat = stat
        self._seen: dict[Path, Stat | None] = {}

    def touched(self, path: Path) -> None:
        self._seen[path] = None  # looked at again on the next check, whatever it was before

    def pending(self) -> int:
        return len(self._seen)

    def check(self, now_ns: int | None = None) -> Changes:
        now_ns = time.time_ns() if now_ns is None else now_ns
        out = Changes()
        for path, before in list(self._seen.items()):
            current = self._stat(path)
            if current is None:
                out.deletes.append(path)
                del self._seen[path]
            elif current == before and now_ns - current[1] >= self.settle_ns:
                out.upserts.append(path)
                del self._seen[path]
            else:
                self._seen[path] = current
        return out


def watch_folder(
    root: Path,
    *,
    stop: threading.Event,
    settle_s: float = 1.0,
    debounce_ms: int = 500,
    on_ready: Callable[[], None] | None = None,
) -> Iterator[Changes]:
    """Batches of settled changes under `root` (recursively) until `stop` is set.

    `on_ready` is called once the OS watch is in place: a change made after it is never missed.
    """
    from watchfiles import Change, watch

    root = root.resolve()
    settler = Settler(settle_s)
    # Woken at least every settle interval, so pending files are looked at again without new events.
    tick_ms = max(50, int(settle_s * 1000 / 2))
    events = watch(
        root,
        watch_filter=lambda _change, path: is_image(path),
        debounce=debounce_ms,
        step=50,
        stop_event=stop,
        rust_timeout=tick_ms,
        yield_on_timeout=True,
        raise_interrupt=False,
    )
    for batch in events:
        if on_ready is not None:
            # watchfiles yields (events or a timeout) only from inside its watch loop.
            on_ready()
            on_ready = None
        deleted: list[Path] = []
        for change, raw in batch:
            path = Path(raw)
            if change == Change.deleted and not path.exists():
                deleted.append(path)
            else:
                settler.touched(path)
        ready = settler.check()
        ready.deletes = sorted(set(ready.deletes) | set(deleted))
        if ready:
            log.info("%s: %d changed, %d deleted", root, len(ready.upserts), len(ready.deletes))
            yield ready
