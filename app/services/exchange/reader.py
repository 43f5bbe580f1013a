"""`pe-search import`: an export read back into a collection (new, or one of the same model), no re-embedding.

Everything that can be checked is checked before the first row is written: the manifest, each
shard's files, row counts, the vectors' shape and finiteness, the model and dimension. Rows
then go in batches; content the collection already holds (same sha256) is matched, not repeated,
so importing twice adds nothing the second time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from app.errors import InvalidInputError
from app.model.variants import get_variant
from app.services.exchange.layout import METADATA_SCHEMA, ExportManifest, Shard
from index.dto import NewImage
from index.store import VectorStore

BATCH_ROWS = 10_000
_REQUIRED = [name for name in METADATA_SCHEMA.names if name != "image_path"]
_NOT_NULL = ("uri", "sha256", "width", "height", "byte_size")


@dataclass
class ImportResult:
    collection: str
    added: int
    matched: int
    created_collection: bool


def _check_shard(directory: Path, shard: Shard, manifest: ExportManifest) -> None:
    meta_path = directory / shard.metadata
    if not meta_path.is_file():
        raise InvalidInputError(f"the export lacks {shard.metadata}")
    try:
        parquet = pq.ParquetFile(meta_path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise InvalidInputError(f"{shard.metadata} is not a readable Parquet file: {exc}") from exc
    missing = [name for name in _REQUIRED if name not in parquet.schema_arrow.names]
    if manifest.format == "parquet" and "embedding" not in parquet.schema_arrow.names:
        missing.append("embedding")
    if missing:
        raise InvalidInputError(f"{shard.metadata} lacks the columns {', '.join(missing)}")
    if parquet.metadata.num_rows != shard.rows:
        raise InvalidInputError(
            f"{shard.metadata} has {parquet.metadata.num_rows} rows, the manifest says {shard.rows}"
        )
    if manifest.format == "npy":
        vectors = NpyRows(directory, shard)
        if vectors.shape != (shard.rows, manifest.dim):
            raise InvalidInputError(
                f"{shard.embeddings} holds {vectors.shape}, the manifest says ({shard.rows}, {manifest.dim})"
            )
    else:
        column = parquet.schema_arrow.field("embedding").type
        if not (
            pa.types.is_fixed_size_list(column)
            and column.list_size == manifest.dim
            and pa.types.is_float32(column.value_type)
        ):
            raise InvalidInputError(f"{shard.metadata}: embedding is {column}, not {manifest.dim} float32 values a row")
    for columns, block in _batches(directory, shard, manifest):
        _check_batch(shard, columns, block)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number pe-search stores")


def _check_batch(shard: Shard, columns: dict[str, list[Any]], block: np.ndarray) -> None:
    for name in _NOT_NULL:
        if any(v is None for v in columns[name]):
            raise InvalidInputError(f"{shard.metadata}: the column {name} has empty (null) cells")
    for row, text in enumerate(columns["metadata"]):
        try:
            meta = json.loads(text or "{}", parse_constant=_reject_constant)
        except ValueError as exc:
            raise InvalidInputError(f"{shard.metadata}: row {row} of a batch has unreadable metadata ({exc})") from exc
        if not isinstance(meta, dict):
            raise InvalidInputError(
                f"{shard.metadata}: metadata must be JSON objects, a row holds {type(meta).__name__}"
            )
    where = shard.embeddings or shard.metadata
    if not np.isfinite(block).all():
        raise InvalidInputError(f"{where} holds NaN or infinite values")
    norms = np.linalg.norm(block, axis=1)
    if len(norms) and float(np.abs(norms - 1).max()) > 1e-3:
        raise InvalidInputError(
            f"{where} holds vectors that are not unit length: not embeddings as pe-search stores them"
        )


class NpyRows:
    """A float32 .npy matrix read a range of rows at a time with plain reads: a memory map would leave
    every page read in the process's resident memory until the end of the shard."""

    def __init__(self, directory: Path, shard: Shard) -> None:
        if shard.embeddings is None or not (directory / shard.embeddings).is_file():
            raise InvalidInputError(f"the export lacks the embeddings of {shard.metadata}")
        self.path = directory / shard.embeddings
        try:
            with open(self.path, "rb") as f:
                version = np.lib.format.read_magic(f)
                header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = header(f)
                self.offset = f.tell()
        except ValueError as exc:
            raise InvalidInputError(f"{shard.embeddings} is not a readable .npy file: {exc}") from exc
        if dtype != np.dtype("<f4") or len(shape) != 2 or fortran:
            raise InvalidInputError(f"{shard.embeddings} holds {dtype} of shape {shape}, not float32 rows")
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        if self.path.stat().st_size < self.offset + self.shape[0] * self.shape[1] * 4:
            raise InvalidInputError(f"{shard.embeddings} is truncated: it is shorter than its {shape} header says")

    def read(self, start: int, rows: int) -> np.ndarray:
        rows = max(0, min(rows, self.shape[0] - start))
        with open(self.path, "rb") as f:
            f.seek(self.offset + start * self.shape[1] * 4)
            block = np.fromfile(f, dtype="<f4", count=rows * self.shape[1])
        return block.reshape(rows, self.shape[1]).astype(np.float32, copy=False)


def check_export(directory: Path) -> ExportManifest:
    """The manifest of a whole, readable export, or InvalidInputError saying what is wrong."""
    manifest = ExportManifest.read(directory)
    variant = get_variant(manifest.model)  # an unknown model is refused with the valid ids
    if variant.dim != manifest.dim:
        raise InvalidInputError(f"the export says {manifest.model} has {manifest.dim}-d vectors; it has {variant.dim}")
    if sum(s.rows for s in manifest.shards) != manifest.count:
        raise InvalidInputError("the export's shards do not add up to its count")
    for shard in manifest.shards:
        _check_shard(directory, shard, manifest)
    return manifest


def _batches(
    directory: Path, shard: Shard, manifest: ExportManifest
) -> Iterator[tuple[dict[str, list[Any]], np.ndarray]]:
    """(metadata columns, vectors) of a shard, BATCH_ROWS rows at a time, in step."""
    vectors = NpyRows(directory, shard) if manifest.format == "npy" else None
    at = 0
    for batch in pq.ParquetFile(directory / shard.metadata).iter_batches(batch_size=BATCH_ROWS):
        n = batch.num_rows
        if vectors is not None:
            block = vectors.read(at, n)
        else:
            embedding = batch.column("embedding")
            if embedding.null_count:
                raise InvalidInputError(f"{shard.metadata}: the embedding column has empty (null) rows")
            block = np.asarray(embedding.flatten(), dtype=np.float32).reshape(n, manifest.dim)
            batch = batch.drop_columns(["embedding"])
        at += n
        yield batch.to_pydict(), block


def _rows(directory: Path, shard: Shard, manifest: ExportManifest) -> Iterator[list[NewImage]]:
    for columns, block in _batches(directory, shard, manifest):
        n = len(block)
        yield [
            NewImage(
                sha256=columns["sha256"][i],
                uri=columns["uri"][i],
                width=columns["width"][i],
                height=columns["height"][i],
                format=columns["format"][i],
                byte_size=columns["byte_size"][i],
                vector=block[i].copy(),
                meta=json.loads(columns["metadata"][i] or "{}"),
                created_at=columns["created_at"][i],
            )
            for i in range(n)
        ]


def import_collection(
    store: VectorStore,
    *,
    source: Path,
    collection: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> ImportResult:
    manifest = check_export(source)
    name = collection or manifest.collection
    created = store.model_of(name) is None
    info = store.ensure_collection(name, model=manifest.model, dim=manifest.dim)  # another model's: refused
    result = ImportResult(collection=info.name, added=0, matched=0, created_collection=created)
    for shard in manifest.shards:
        for rows in _rows(source, shard, manifest):
            for _, was_created in store.add_images(info.id, rows):
                if was_created:
                    result.added += 1
                else:
                    result.matched += 1
            if progress:
                progress(result.added + result.matched)
    store.checkpoint(info.name)
    return result
