"""The export layout, in one place for the writer and the reader.

    DIR/manifest.json                       model, dim, count, created, shards
    DIR/img_emb/img_emb_0000.npy            float32 (rows, dim), one shard     (format npy)
    DIR/metadata/metadata_0000.parquet      id, uri, image_path, sha256, ... in the shard's row order

With format `parquet` the vectors are the metadata files' `embedding` column instead (a fixed-size
list of float32), and there is no img_emb folder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from app.errors import InvalidInputError

FORMAT_NAME = "pe-search-export"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ExportFormat = Literal["npy", "parquet"]

METADATA_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("uri", pa.string()),
        # clip-retrieval's name for the same column, so its tools read these files as they are.
        ("image_path", pa.string()),
        ("sha256", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("format", pa.string()),
        ("byte_size", pa.int64()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        # JSON text: metadata keys differ from image to image, a fixed Parquet struct would not hold them.
        ("metadata", pa.string()),
    ]
)


def embedding_type(dim: int) -> pa.DataType:
    return pa.list_(pa.float32(), dim)


def embeddings_path(shard: int) -> str:
    return f"img_emb/img_emb_{shard:04d}.npy"


def metadata_path(shard: int) -> str:
    return f"metadata/metadata_{shard:04d}.parquet"


@dataclass
class Shard:
    metadata: str
    rows: int
    embeddings: str | None = None


@dataclass
class ExportManifest:
    model: str
    dim: int
    count: int
    created: str
    collection: str
    format: ExportFormat = "npy"
    shards: list[Shard] = field(default_factory=list)
    id_watermark: int = 0

    def write(self, directory: Path) -> None:
        body = {"format_name": FORMAT_NAME, "format_version": FORMAT_VERSION, **asdict(self)}
        tmp = directory / f"{MANIFEST}.tmp"
        tmp.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
        tmp.replace(directory / MANIFEST)  # last, so a directory with a manifest is a whole export

    @classmethod
    def read(cls, directory: Path) -> ExportManifest:
        path = directory / MANIFEST
        if not path.is_file():
            raise InvalidInputError(f"{directory} is not a pe-search export: it has no {MANIFEST}.")
        try:
            body: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            if body.get("format_name") != FORMAT_NAME:
                raise InvalidInputError(f"{path} is not a pe-search export manifest.")
            if body.get("format_version") != FORMAT_VERSION:
                raise InvalidInputError(f"{path} is format version {body.get('format_version')}; this reads 1.")
            shards = [Shard(**s) for s in body["shards"]]
            return cls(
                model=body["model"],
                dim=int(body["dim"]),
                count=int(body["count"]),
                created=body["created"],
                collection=body["collection"],
                format=body.get("format", "npy"),
                shards=shards,
                id_watermark=int(body.get("id_watermark", 0)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInputError(f"{path} is damaged: {exc}") from exc
