"""`pe-search export`: a collection's rows up to a watermark, streamed in batches into shards."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from app.errors import InvalidInputError
from app.services.exchange.layout import (
    METADATA_SCHEMA,
    ExportFormat,
    ExportManifest,
    Shard,
    embedding_type,
    embeddings_path,
    metadata_path,
)
from index.dto import ImageRecord
from index.store import VectorStore

SHARD_ROWS = 100_000
BATCH_ROWS = 10_000


def _metadata_table(records: list[ImageRecord]) -> pa.Table:
    return pa.table(
        {
            "id": [r.id for r in records],
            "uri": [r.uri for r in records],
            "image_path": [r.uri for r in records],
            "sha256": [r.sha256 for r in records],
            "width": [r.width for r in records],
            "height": [r.height for r in records],
            "format": [r.format for r in records],
            "byte_size": [r.byte_size for r in records],
            "created_at": [r.created_at for r in records],
            "metadata": [json.dumps(r.meta, ensure_ascii=False, allow_nan=False) for r in records],
        },
        schema=METADATA_SCHEMA,
    )


class _ShardWriter:
    """One shard's metadata Parquet (a row group per batch) and its vectors, written as they come.

    The .npy header needs the row count, which is only known at the end: the vectors go to a raw
    file first and get their header when the shard closes, so memory stays one batch.
    """

    def __init__(self, directory: Path, number: int, dim: int, fmt: ExportFormat) -> None:
        self.directory, self.number, self.dim, self.fmt = directory, number, dim, fmt
        schema = METADATA_SCHEMA.append(pa.field("embedding", embedding_type(dim))) if fmt == "parquet" else None
        self.parquet = pq.ParquetWriter(directory / metadata_path(number), schema or METADATA_SCHEMA)
        self.raw: BinaryIO | None = None
        if fmt == "npy":
            self.raw = open(directory / f"{embeddings_path(number)}.part", "wb")  # noqa: SIM115 - closed in close()
        self.rows = 0

    def add(self, records: list[ImageRecord], vectors: np.ndarray) -> None:
        table = _metadata_table(records)
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        if self.raw is not None:
            self.raw.write(vectors.tobytes())
        else:
            flat = pa.array(vectors.reshape(-1), type=pa.float32())
            table = table.append_column("embedding", pa.FixedSizeListArray.from_arrays(flat, self.dim))
        self.parquet.write_table(table)
        self.rows += len(records)

    def close(self) -> Shard:
        self.parquet.close()
        if self.raw is None:
            return Shard(metadata=metadata_path(self.number), rows=self.rows)
        self.raw.close()
        part = self.directory / f"{embeddings_path(self.number)}.part"
        with open(self.directory / embeddings_path(self.number), "wb") as out, open(part, "rb") as raw:
            header = {"descr": "<f4", "fortran_order": False, "shape": (self.rows, self.dim)}
            np.lib.format.write_array_header_1_0(out, header)
            shutil.copyfileobj(raw, out, 16 * 1024 * 1024)
        part.unlink()
        return Shard(metadata=metadata_path(self.number), rows=self.rows, embeddings=embeddings_path(self.number))


def export_collection(
    store: VectorStore,
    *,
    collection: str,
    out: Path,
    fmt: ExportFormat = "npy",
    shard_rows: int = SHARD_ROWS,
    progress: Callable[[int], None] | None = None,
) -> ExportManifest:
    """Every image of the collection committed when the export starts; later ones wait for the next export."""
    info = store.collection(collection)
    if out.exists() and any(out.iterdir()):
        raise InvalidInputError(f"{out} is not empty: export into a new or empty folder.")
    (out / "metadata").mkdir(parents=True, exist_ok=True)
    if fmt == "npy":
        (out / "img_emb").mkdir(exist_ok=True)
    watermark = store.id_watermark(info.id)
    manifest = ExportManifest(
        model=info.model,
        dim=info.dim,
        count=0,
        created=datetime.now(UTC).isoformat(),
        collection=info.name,
        format=fmt,
        id_watermark=watermark,
    )
    shard: _ShardWriter | None = None
    for records, vectors in store.iter_with_vectors(info.id, up_to=watermark, batch=min(BATCH_ROWS, shard_rows)):
        if shard is None:
            shard = _ShardWriter(out, len(manifest.shards), info.dim, fmt)
        shard.add(records, vectors)
        manifest.count += len(records)
        if shard.rows >= shard_rows:
            manifest.shards.append(shard.close())
            shard = None
        if progress:
            progress(manifest.count)
    if shard is not None:
        manifest.shards.append(shard.close())
    manifest.write(out)
    return manifest
