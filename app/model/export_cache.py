"""Exported towers on disk: one entry per variant, weights, exporter and opset, written once and checked on load.

An entry is a folder `<variant>-<key digest>/` holding the ONNX towers, the tokenizer, the probe set's
torch fp32 embeddings and a manifest. It is built in a temporary folder and renamed into place, so a
reader sees a whole entry or none; one written by another key, or damaged, is rebuilt, never trusted.
Torch-free: this is how a process starts without torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from app.model.variants import Variant
from app.model.weights import HUB, RANDOM, RANDOM_WEIGHTS_SEED, cached_hub_checkpoint, file_digest

log = logging.getLogger(__name__)

# Bumped when an entry's layout or the way towers are exported changes: older entries are then rebuilt.
ENTRY_FORMAT = 1
OPSET = 18
EXPORTER = "torchscript"
MANIFEST = "manifest.json"
TOWER_FILES = {"image": "image.onnx", "text": "text.onnx"}
# Bytes read at each end of a file for its fingerprint: a truncated, overwritten or half-copied file
# changes it, and checking costs milliseconds where hashing a 1.4 GB text tower costs seconds.
_EDGE = 1 << 20


def default_root(cache_dir: Path | None) -> Path:
    """<cache_dir>/exports, else $XDG_CACHE_HOME/pe-search/exports (~/.cache/pe-search/exports)."""
    if cache_dir is not None:
        return cache_dir / "exports"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pe-search" / "exports"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


@dataclass(frozen=True)
class ExportKey:
    """Everything an exported graph depends on; two processes agreeing on it may share an entry."""

    variant: str
    weights: str
    torch: str = field(default_factory=lambda: _version("torch"))
    open_clip: str = field(default_factory=lambda: _version("open_clip_torch"))
    exporter: str = EXPORTER
    opset: int = OPSET
    format: int = ENTRY_FORMAT

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    @property
    def folder(self) -> str:
        return f"{self.variant}-{self.digest}"


def weights_identity(variant: Variant, weights: str, *, hub_cache: Path | None, memo_dir: Path) -> str | None:
    """What the loaded weights are, without loading them; None for hub weights not downloaded yet."""
    if weights == RANDOM:
        # Random weights are a function of the seed and of torch's generator (in the key already).
        return f"random:seed={RANDOM_WEIGHTS_SEED}"
    path = cached_hub_checkpoint(variant, hub_cache) if weights == HUB else weights
    if path is None or not Path(path).is_file():
        return None
    return f"sha256:{_memo_digest(Path(path).resolve(), memo_dir)}"


def _memo_digest(path: Path, memo_dir: Path) -> str:
    """A weights file's sha256, remembered per (path, size, mtime): a 1 GB checkpoint hashes in seconds."""
    stat = path.stat()
    memo = memo_dir / "digests" / hashlib.sha256(str(path).encode()).hexdigest()[:32]
    stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
    with contextlib.suppress(OSError, ValueError):
        recorded_stamp, digest = memo.read_text().split()
        if recorded_stamp == stamp:
            return digest
    digest = file_digest(path)
    with contextlib.suppress(OSError):  # a read-only cache only costs the hash next time
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.write_text(f"{stamp} {digest}\n")
    return digest


def fingerprint(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as file:
        digest.update(file.read(_EDGE))
        if size > _EDGE:
            file.seek(max(_EDGE, size - _EDGE))
            digest.update(file.read(_EDGE))
    return {"size": size, "edges": digest.hexdigest()}


@dataclass(frozen=True)
class Entry:
    """A checked entry: its folder and manifest."""

    path: Path
    manifest: dict[str, Any]

    def file(self, name: str) -> Path:
        return self.path / name

    def parity(self, kind: str) -> float:
        return float(self.manifest["parity"][kind])

    def derived(self, name: str) -> dict[str, Any] | None:
        found = self.manifest.get("derived", {}).get(name)
        if found is None or not self.file(found["file"]).is_file():
            return None
        return found if fingerprint(self.file(found["file"])) == found["fingerprint"] else None


def check_entry(path: Path, key: ExportKey) -> Entry | None:
    """The entry at `path` if it is complete, whole and made for `key`; else None, with the reason logged."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("Export cache entry %s has an unreadable manifest (%s): rebuilding it", path, exc)
        return None
    if manifest.get("key") != asdict(key):
        log.warning("Export cache entry %s was made for other weights or versions: rebuilding it", path)
        return None
    for name, expected in manifest.get("files", {}).items():
        try:
            found = fingerprint(path / name)
        except OSError:
            found = None
        if found != expected:
            log.warning("Export cache entry %s: %s is missing or damaged: rebuilding the entry", path, name)
            return None
    return Entry(path, manifest)


class ExportCache:
    """The folder of entries. `lock(key)` serialises exports of one key across processes."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def lookup(self, key: ExportKey) -> Entry | None:
        return check_entry(self.root / key.folder, key)

    @contextlib.contextmanager
    def lock(self, key: ExportKey) -> Iterator[None]:
        with self.lock_folder(key.folder):
            yield

    @contextlib.contextmanager
    def lock_folder(self, folder: str) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / f".{folder}.lock")):
            yield

    @staticmethod
    def reread(entry: Entry) -> Entry:
        """The entry with its manifest as on disk now (another process may have added to it)."""
        return Entry(entry.path, json.loads((entry.path / MANIFEST).read_text()))

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh folder on the cache's file system, removed unless published."""
        self.root.mkdir(parents=True, exist_ok=True)
        folder = self.root / f".staging-{uuid.uuid4().hex}"
        folder.mkdir()
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def publish(self, staged: Path, key: ExportKey, manifest: dict[str, Any]) -> Entry:
        """Seal `staged` with its manifest (fingerprints of every file) and rename it into place."""
        manifest = {**manifest, "key": asdict(key)}
        manifest["files"] = {p.name: fingerprint(p) for p in sorted(staged.iterdir()) if p.is_file()}
        for path in staged.iterdir():
            _fsync(path)
        (staged / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        _fsync(staged / MANIFEST)
        target = self.root / key.folder
        if target.exists():
            # Held under the key's lock, so the old entry is no one's to finish: set it aside, then drop it.
            trash = self.root / f".trash-{uuid.uuid4().hex}"
            target.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        staged.rename(target)
        entry = check_entry(target, key)
        assert entry is not None, "an entry just published must check"
        return entry

    def record_check(self, entry: Entry, name: str, value: float) -> None:
        """Remember a measurement made on the entry (a runtime's cosine to fp32) in its manifest."""
        with self.lock_folder(entry.path.name):
            manifest = json.loads((entry.path / MANIFEST).read_text())
            manifest.setdefault("checks", {})[name] = value
            _write_manifest(entry.path, manifest)
        entry.manifest.setdefault("checks", {})[name] = value

    def add_derived(self, entry: Entry, name: str, source: Path, details: dict[str, Any]) -> Entry:
        """Add a file made from the entry (a quantised tower) and record it in the manifest, atomically."""
        target = entry.path / details["file"]
        _fsync(source)
        os.replace(source, target)
        manifest = json.loads((entry.path / MANIFEST).read_text())
        manifest.setdefault("derived", {})[name] = {**details, "fingerprint": fingerprint(target)}
        _write_manifest(entry.path, manifest)
        return Entry(entry.path, manifest)


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    staged = folder / f".{MANIFEST}.{uuid.uuid4().hex}"
    staged.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    _fsync(staged)
    os.replace(staged, folder / MANIFEST)


def _fsync(path: Path) -> None:
    with path.open("rb") as file:
        os.fsync(file.fileno())
