"""A backup's MANIFEST.json: what it holds, file by file, and the checks a restore runs before writing anything.

The manifest is written last, so a folder without one is an interrupted backup, never mistaken for a whole one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from sqlalchemy import make_url

from app.errors import BackupError, DamagedBackupError
from index.ann.checkpoint import POINTER
from index.ann.vector_file import Segment
from index.files import atomic_write

MANIFEST = "MANIFEST.json"
FORMAT_VERSION = 1
SQLITE_FILE = "pe-search.db"
POSTGRES_DUMP = "database.dump"
INDEXES = "indexes"
UPLOADS = "uploads"
# A manifest may only name files under these: a crafted one cannot make a restore write elsewhere.
TOP_LEVEL = frozenset({SQLITE_FILE, POSTGRES_DUMP, INDEXES, UPLOADS})
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative to the backup folder, "/"-separated
    size: int
    sha256: str


@dataclass
class CollectionEntry:
    """A collection as the copied database holds it; max_image_id is the backup's watermark."""

    id: int
    name: str
    model: str
    dim: int
    generation: int
    images: int
    max_image_id: int
    max_tombstone_id: int
    # The copied index checkpoint's watermarks (at or below the database's), or None: rebuilt at first start.
    checkpoint: dict[str, Any] | None = None


# A later pe-search may record more per collection in the same format version: those keys are ignored.
_COLLECTION_KEYS = tuple(f.name for f in fields(CollectionEntry))


@dataclass
class Manifest:
    pe_search_version: str
    created_at: str
    database: str  # "sqlite" or "postgresql"
    alembic_revision: str | None
    collections: list[CollectionEntry] = field(default_factory=list)
    files: list[FileEntry] = field(default_factory=list)
    format_version: int = FORMAT_VERSION

    @property
    def database_file(self) -> str:
        return SQLITE_FILE if self.database == "sqlite" else POSTGRES_DUMP

    def to_json(self) -> dict[str, Any]:
        return {"format": "pe-search-backup", **asdict(self)}


def copy_file(source: Path, target: Path, root: Path) -> FileEntry:
    with open(source, "rb") as reader:
        return copy_stream(reader, target, root)


def copy_stream(reader: BinaryIO, target: Path, root: Path) -> FileEntry:
    """Copy to a new file, hashing the bytes as they pass: each byte is read once, and fsynced before it counts."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    with open(target, "xb") as out:
        while chunk := reader.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return FileEntry(target.relative_to(root).as_posix(), size, digest.hexdigest())


def hash_file(path: Path, root: Path) -> FileEntry:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as reader:
        while chunk := reader.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return FileEntry(path.relative_to(root).as_posix(), size, digest.hexdigest())


def write_manifest(root: Path, manifest: Manifest) -> None:
    atomic_write(root / MANIFEST, lambda tmp: tmp.write_text(json.dumps(manifest.to_json(), indent=1) + "\n"))


def read_manifest(root: Path) -> Manifest:
    """The parsed manifest; a missing, unparseable or unknown one is refused with what is wrong."""
    if not root.is_dir():
        raise BackupError(f"{root} is not a folder holding a pe-search backup")
    try:
        raw = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        raise DamagedBackupError(MANIFEST, "missing (not a pe-search backup, or one that did not finish)") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DamagedBackupError(MANIFEST, f"not readable JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != "pe-search-backup":
        raise DamagedBackupError(MANIFEST, "not a pe-search backup manifest")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise BackupError(
            f"{root / MANIFEST}: backup format {version!r} is not one this pe-search reads ({FORMAT_VERSION}); "
            f"restore it with pe-search {raw.get('pe_search_version', '?')}, which made it"
        )
    try:
        manifest = Manifest(
            pe_search_version=str(raw["pe_search_version"]),
            created_at=str(raw["created_at"]),
            database=str(raw["database"]),
            alembic_revision=raw["alembic_revision"],
            collections=[CollectionEntry(**{k: c[k] for k in _COLLECTION_KEYS if k in c}) for c in raw["collections"]],
            files=[FileEntry(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in raw["files"]],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DamagedBackupError(MANIFEST, f"incomplete or malformed ({type(exc).__name__}: {exc})") from None
    if manifest.database not in ("sqlite", "postgresql"):
        raise DamagedBackupError(MANIFEST, f"unknown database kind {manifest.database!r}")
    for entry in manifest.files:
        _check_path(entry.path)
    if manifest.database_file not in {f.path for f in manifest.files}:
        raise DamagedBackupError(MANIFEST, f"lists no {manifest.database_file}")
    return manifest


def sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupError(f"the database URL {url!r} names no SQLite file to back up or restore into")
    return Path(database)


def _check_path(path: str) -> None:
    parts = PurePosixPath(path).parts
    if not parts or path.startswith("/") or ".." in parts or parts[0] not in TOP_LEVEL:
        raise DamagedBackupError(MANIFEST, f"names a file outside the backup's layout: {path!r}")


def verify_files(root: Path, manifest: Manifest) -> None:
    """Every listed file present with its size and sha256, and every checkpoint naming only listed files."""
    for entry in manifest.files:
        path = root / entry.path
        if not path.is_file():
            raise DamagedBackupError(entry.path, "missing")
        size = path.stat().st_size
        if size != entry.size:
            raise DamagedBackupError(entry.path, f"{size} bytes, the manifest says {entry.size} (truncated?)")
        if hash_file(path, root).sha256 != entry.sha256:
            raise DamagedBackupError(entry.path, "contents differ from the manifest's sha256 (altered or corrupt)")
    listed = {f.path for f in manifest.files}
    for pointer in sorted(p for p in listed if p.startswith(f"{INDEXES}/") and p.endswith(f"/{POINTER}")):
        folder = pointer.rsplit("/", 1)[0]
        try:
            names = checkpoint_files(json.loads((root / pointer).read_text()))
        except (ValueError, KeyError, TypeError) as exc:
            raise DamagedBackupError(pointer, f"not a readable checkpoint ({exc})") from None
        for name in names:
            if f"{folder}/{name}" not in listed:
                raise DamagedBackupError(pointer, f"names {name}, which the backup does not hold")


def checkpoint_files(pointer: dict[str, Any]) -> list[str]:
    """The files a CHECKPOINT.json names: its index file and each re-rank segment's two files."""
    if not pointer.get("file"):
        raise ValueError("it names no index file")
    segments = [Segment.of(s) for s in pointer.get("segments", [])]  # none in checkpoints older than them
    return [str(pointer["file"])] + [name for s in segments for name in (f"{s.stem}.ids.npy", f"{s.stem}.{s.dtype}")]


@dataclass
class Summary:
    """What a backup took or a restore put back, as the CLI prints it (one line, or JSON)."""

    action: str  # "backup" or "restore"
    backup: Path
    data_dir: Path
    manifest: Manifest
    seconds: float
    replaced: bool = False  # a restore over an existing data dir (--force)

    def to_dict(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "action": self.action,
            "backup": str(self.backup),
            "data_dir": str(self.data_dir),
            "created_at": m.created_at,
            "pe_search_version": m.pe_search_version,
            "database": m.database,
            "alembic_revision": m.alembic_revision,
            "collections": [asdict(c) for c in m.collections],
            "images": sum(c.images for c in m.collections),
            "files": len(m.files),
            "bytes": sum(f.size for f in m.files),
            "seconds": round(self.seconds, 3),
            "replaced": self.replaced,
        }

    def line(self) -> str:
        m = self.manifest
        shown = ", ".join(f"{c.name!r} {c.images} images up to id {c.max_image_id}" for c in m.collections[:5])
        more = f" and {len(m.collections) - 5} more" if len(m.collections) > 5 else ""
        size = sum(f.size for f in m.files) / 1e6
        noun = "collection" if len(m.collections) == 1 else "collections"
        what = f"{len(m.collections)} {noun} ({shown}{more})" if m.collections else "no collections"
        if self.action == "backup":
            return f"backed up {what}: {len(m.files)} files, {size:.1f} MB, to {self.backup} in {self.seconds:.1f} s"
        replaced = ", replacing what was there" if self.replaced else ""
        return (
            f"restored {what} from the backup of {m.created_at} into {self.data_dir}{replaced} in "
            f"{self.seconds:.1f} s; indexes catch up with the database when pe-search starts"
        )
