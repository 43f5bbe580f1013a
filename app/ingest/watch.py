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
    # Gone paths that were not image files: maybe folders moved or deleted whole (one event for the
    # folder, none for what it held), so every source under them is checked.
    deleted_dirs: list[Path] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.upserts or self.deletes or self.deleted_dirs)


def is_image(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


# What a path that exists but cannot be read stats as: never "deleted" (a permission change or a stale
# network handle must not remove images); once it holds still it is handed on, and its read fails with the reason.
UNREADABLE: Stat = (-1, 0)


def _stat(path: Path) -> Stat | None:
    try:
        result = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return UNREADABLE
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
        deleted: set[Path] = set()
        gone_dirs: set[Path] = set()
        for change, raw in batch:
            path = Path(raw)
            if change == Change.deleted and not os.path.lexists(path):
                (deleted if is_image(path) else gone_dirs).add(path)
            elif path.is_dir():
                # A folder moved or copied in arrives as one event: what it holds is looked at file by file.
                for inner in _images_under(path):
                    settler.touched(inner)
            elif is_image(path):
                settler.touched(path)
        ready = settler.check()
        ready.deletes = sorted(set(ready.deletes) | deleted)
        ready.deleted_dirs = sorted(gone_dirs)
        if ready:
            log.info("%s: %d changed, %d deleted", root, len(ready.upserts), len(ready.deletes))
            yield ready


def _images_under(folder: Path) -> Iterator[Path]:
    for directory, subdirs, files in os.walk(folder, followlinks=False):
        subdirs.sort()
        yield from (Path(directory) / name for name in sorted(files) if is_image(name))
