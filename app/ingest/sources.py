"""Readers: what to ingest, as items with a uri, where to read the bytes, and user metadata."""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.errors import SourceError
from app.media.fetch import is_http_url
from app.media.objects import ObjectStorage, is_object_url, under_prefix

log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
LOCATION_COLUMNS = ("path", "url", "uri", "file", "image", "filename")


@dataclass(frozen=True)
class SourceItem:
    uri: str
    path: Path | None = None
    url: str | None = None
    # s3://, gs:// or az://: read through app.media.objects, in the same decode threads as files.
    object_url: str | None = None
    etag: str | None = None
    data: bytes | None = None
    root: Path | None = None
    size: int | None = None
    mtime: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Rejected:
    """An item refused before reading it (a symlink out of the root, a bad manifest row)."""

    uri: str
    reason: str


def file_item(path: Path, root: Path, metadata: dict[str, Any] | None = None) -> SourceItem | Rejected:
    """A file under root; symlinks are followed only while they stay inside it."""
    try:
        real = path.resolve(strict=True)
        stat = real.stat()
    except OSError as exc:
        return Rejected(str(path), f"cannot read the file ({exc.strerror or exc})")
    if not real.is_relative_to(root):
        return Rejected(str(path), "the path leads outside the ingest root (symlink or ..)")
    return SourceItem(
        uri=str(real), path=real, root=root, size=stat.st_size, mtime=stat.st_mtime, metadata=metadata or {}
    )


def folder_items(root: Path) -> Iterator[SourceItem | Rejected]:
    """Every image file under root, recursively, in a stable order; symlinked folders are not entered."""
    root = root.resolve()
    if not root.is_dir():
        raise SourceError(f"{root} is not a folder")
    for directory, subdirs, files in os.walk(root, followlinks=False):
        subdirs.sort()
        for name in sorted(files):
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                yield file_item(Path(directory) / name, root)


def count_folder(root: Path) -> int:
    return sum(
        1
        for _, _, files in os.walk(root.resolve(), followlinks=False)
        for name in files
        if Path(name).suffix.lower() in IMAGE_EXTENSIONS
    )


def object_items(url: str, storage: ObjectStorage) -> Iterator[SourceItem | Rejected]:
    """Every image object under an s3:// (gs://, az://) prefix, streamed as the store lists them."""
    for info in storage.list(url):
        if Path(info.url).suffix.lower() in IMAGE_EXTENSIONS:
            yield SourceItem(uri=info.url, object_url=info.url, size=info.size, etag=info.etag)


def url_list_items(path: Path) -> Iterator[SourceItem | Rejected]:
    """One URL a line; blank lines and # comments are skipped."""
    for line in _read_text(path).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        yield SourceItem(uri=line, url=line) if is_http_url(line) else Rejected(line, "not an http(s) URL")


def manifest_items(
    path: Path,
    column: str | None = None,
    allowed_roots: tuple[Path, ...] | None = None,
    allowed_objects: tuple[str, ...] | None = None,
) -> Iterator[SourceItem | Rejected]:
    """A CSV (header row), JSONL or Parquet manifest: a path/URL column, every other column is metadata.

    Relative paths are taken from the manifest's folder, which is also their root. With
    `allowed_roots` (server-side jobs), files elsewhere are refused, and object URLs outside
    `allowed_objects`.
    """
    suffix = path.suffix.lower()
    rows: Iterator[tuple[int, dict[str, Any] | Rejected]]
    if suffix == ".parquet":
        rows = _parquet_rows(path)
    else:
        rows = _jsonl_rows(path) if suffix in (".jsonl", ".ndjson") else _csv_rows(path)
    root = path.resolve().parent
    for number, row in rows:
        if isinstance(row, Rejected):
            yield row
            continue
        key = column or next((c for c in LOCATION_COLUMNS if c in row), None)
        if key is None or key not in row:
            raise SourceError(f"{path}: no {column or '/'.join(LOCATION_COLUMNS)} column")
        location = str(row.pop(key) or "").strip()
        if not location:
            yield Rejected(f"{path}:{number}", f"row {number} has an empty {key}")
        elif "\0" in location:  # no file system takes one; os.path would raise instead of answering
            yield Rejected(f"{path}:{number}", f"row {number}: the {key} holds a NUL character")
        elif is_http_url(location):
            yield SourceItem(uri=location, url=location, metadata=row)
        elif is_object_url(location):
            if allowed_roots is not None and not under_prefix(location, allowed_objects or ()):
                yield Rejected(location, "the object is outside the allowed ingest prefixes")
            else:
                yield SourceItem(uri=location, object_url=location, metadata=row)
        else:
            target = (Path(location) if Path(location).is_absolute() else root / location).resolve()
            item_root = _root_for(target, (root,) if allowed_roots is None else allowed_roots)
            if item_root is None and allowed_roots is not None:
                yield Rejected(str(target), "the path is outside the allowed ingest roots")
            else:
                yield file_item(target, item_root or target.parent, row)


def _root_for(target: Path, roots: tuple[Path, ...]) -> Path | None:
    return next((r.resolve() for r in roots if target.is_relative_to(r.resolve())), None)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(_read_text(path).splitlines())
    for number, row in enumerate(reader, start=2):
        yield number, {k: v for k, v in row.items() if k is not None}


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | Rejected]]:
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            yield number, Rejected(f"{path}:{number}", f"line {number} is not valid JSON")
            continue
        yield number, row if isinstance(row, dict) else Rejected(f"{path}:{number}", f"line {number} is not an object")


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows numbered from 1, read a record batch at a time so a large file never sits in memory whole."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SourceError(
            f"{path}: reading Parquet needs pyarrow; install it with pip install 'pe-search[ray]' (or pyarrow)"
        ) from None
    try:
        with pq.ParquetFile(path) as parquet:
            schema = parquet.schema_arrow
            binary = [f.name for f in schema if _holds_bytes(f.type)]
            if binary:
                # Image bytes (a Hugging Face-style manifest) would copy every image into the metadata JSON.
                log.info("%s: binary columns left out of the metadata: %s", path, ", ".join(binary))
            columns = [f.name for f in schema if f.name not in binary]
            number = 0
            for batch in parquet.iter_batches(batch_size=4096, columns=columns):
                for row in batch.to_pylist():
                    number += 1
                    yield number, {key: _plain(value) for key, value in row.items()}
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError, its IO errors OSErrors
        raise SourceError(f"cannot read {path} as Parquet: {exc}") from exc


def _holds_bytes(kind: Any) -> bool:
    """Whether a Parquet column's Arrow type is binary, or nests binary (in a struct, list, map or dictionary)."""
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        return _holds_bytes(kind.value_type)
    binary = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_fixed_size_binary, pa.types.is_binary_view)
    if any(test(kind) for test in binary):
        return True
    return any(_holds_bytes(kind.field(i).type) for i in range(kind.num_fields))


def _plain(value: Any) -> Any:
    """A Parquet cell as JSON metadata: dates and other typed values as text, NaN as null."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return None if value != value else value
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value.isoformat() if hasattr(value, "isoformat") else str(value)
