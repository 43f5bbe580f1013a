"""All configuration, read once from the environment (prefix PE_SEARCH_)."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, BeforeValidator, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.model.variants import DEFAULT_VERSION_ID, VARIANTS


def _comma_separated(value: object) -> object:
    """`a, b,c` -> ("a", "b", "c"): how these lists are written in the environment; a sequence passes as is."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


@dataclass(frozen=True)
class UrlPolicy:
    """What server-side fetches of `url` images may reach, and how long and how much they may read."""

    enabled: bool = True
    allow_http: bool = False
    allow_ip_hosts: bool = False
    allow_private_hosts: bool = False
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    max_bytes: int = 20 * 1024 * 1024
    max_redirects: int = 3
    # Host patterns: "example.com" matches it and its subdomains. A non-empty allow-list
    # admits only its hosts; the deny-list always wins.
    allow_hosts: tuple[str, ...] = ()
    deny_hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class ObjectPolicy:
    """How object stores are reached: plain values, so it travels to Ray actors as it is. No credentials."""

    max_bytes: int = 20 * 1024 * 1024
    s3_endpoint_url: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    retries: int = 3


# NoDecode: the environment holds `a,b`, not the JSON list pydantic-settings would otherwise expect.
CommaList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_comma_separated)]


def default_workers(cores: int) -> int:
    """One model worker: on 2 cores, two single-threaded ones gained x1.04-1.09 under concurrent load but
    double a lone request's latency (docs/BENCHMARKS.md), so more workers are a setting, not the default."""
    return 1


class Settings(BaseSettings):
    # validate_assignment: a value set after start-up (tests, an embedding app) is parsed like the environment's.
    model_config = SettingsConfigDict(
        env_prefix="PE_SEARCH_", extra="ignore", populate_by_name=True, validate_assignment=True
    )

    host: str = "127.0.0.1"
    # A running server the CLI's `search` sends queries to instead of loading a model (`--server`).
    url: str | None = None
    port: int = Field(default=9001, ge=1, le=65535)

    # Roboflow deployments set PERCEPTION_ENCODER_VERSION_ID; honour it when ours is unset.
    model: str = Field(
        default=DEFAULT_VERSION_ID,
        validation_alias=AliasChoices("PE_SEARCH_MODEL", "PERCEPTION_ENCODER_VERSION_ID"),
    )
    # "hub" downloads on first use, a path loads a local checkpoint, "random" builds
    # the real architecture with random weights (tests and development only).
    weights: str = "hub"
    device: str = "auto"
    data_dir: Path = Path("data")
    # Any SQLAlchemy URL; default: a SQLite file in the data dir. PostgreSQL:
    # postgresql+psycopg://user:password@host:5432/db (the `postgres` extra).
    database_url: str | None = None
    # A reader beside one writer (PostgreSQL, shared data dir): serves searches, refuses
    # writes with 403, never migrates the database or writes index checkpoints.
    read_only: bool = False
    # Server-side ingest jobs may read only under these folders and object-storage prefixes
    # (comma-separated; `s3://bucket/prefix`, `gs://...`, `az://...`); none by default.
    ingest_roots: CommaList = ()
    # Folders the server keeps in sync with a collection (writer only): `COLLECTION=DIR` or `DIR`
    # (into "default"), comma-separated. New and changed files are added, deleted ones removed.
    watch_folders: CommaList = ()
    # A changed file is read once its size and mtime have held still this long (no half-written reads).
    watch_settle_s: float = Field(default=1.0, gt=0, le=600)
    # S3-compatible servers (MinIO, Ceph, R2...): their endpoint. Credentials are never set here: the
    # provider's own chain supplies them (AWS_ACCESS_KEY_ID..., ~/.aws, instance roles; GCS/Azure alike).
    s3_endpoint_url: str | None = None
    object_connect_timeout: float = Field(default=5.0, gt=0)
    object_read_timeout: float = Field(default=30.0, gt=0)
    object_retries: int = Field(default=3, ge=1, le=20)
    # Server-side ingest jobs running at once, each of another collection (one per collection at a time):
    # a watched folder's few changes need not wait behind a long ingest elsewhere.
    ingest_jobs: int = Field(default=2, ge=1, le=16)
    ingest_batch: int = Field(default=32, ge=1, le=1024)
    ingest_workers: int = Field(default=4, ge=1, le=64)
    # Decode JPEGs much larger than the model input at 1/2-1/8 scale (libjpeg draft mode) when ingesting.
    ingest_jpeg_draft: bool = True
    # RAM the vector indexes may use; `auto` index choice stays within it.
    index_memory_budget: int = Field(default=8 * 1024**3, ge=1)
    # Read index checkpoints memory-mapped: start-up does not read the file, processes share its
    # pages; an index copies itself into memory on its first write.
    index_mmap: bool = True
    # After each HNSW or IVF-PQ build, the cheapest nprobe / efSearch / re-rank that reaches this
    # recall@10 on the collection's own vectors within the latency budget (per query, one thread).
    autotune: bool = True
    target_recall: float = Field(default=0.95, gt=0, le=1)
    latency_budget_ms: float = Field(default=5.0, gt=0)
    # IVF-PQ re-ranks from a memory-mapped copy of the vectors beside its checkpoint: float32
    # (exact), float16 (half the disk, scores within about 1e-3), or off (read from the database).
    rerank_vectors: Literal["float32", "float16", "off"] = "float32"
    max_top_k: int = Field(default=1000, ge=1)
    # Signs search cursors. Unset: a random secret per process, so cursors end with it; set one shared
    # secret (16+ characters) for cursors that outlive a restart or move between servers behind one URL.
    cursor_secret: str | None = Field(default=None, min_length=16, repr=False)
    # Cosine at or above which two images count as near-duplicates (Immich's maximum distance 0.01).
    duplicate_threshold: float = Field(default=0.99, gt=0, le=1)
    cache_dir: Path | None = None
    max_batch: int = Field(default=64, ge=1, le=4096)
    # Input limits: each refused with a 4xx and a message, before the work it would cost.
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    max_image_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(default=89_478_485, ge=1)
    max_text_chars: int = Field(default=10_000, ge=1)
    # Access control: comma-separated keys, or a file with one `KEY [read|write]` a line.
    # With none set, the API is open (the default binds to 127.0.0.1 only).
    api_keys: CommaList = Field(default=(), repr=False)
    read_api_keys: CommaList = Field(default=(), repr=False)
    api_keys_file: Path | None = None
    # How many images or texts go through the model in one forward pass; unset: 32 on CPU, 256 on CUDA.
    inference_batch: int | None = Field(default=None, ge=1, le=4096)
    # Per tower: auto takes a faster mode (bf16 with native CPU support, or autocast on CUDA) only when
    # its embeddings of a probe set keep cosine >= 0.999 to fp32 on the loaded weights; int8 only if asked.
    image_precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = "auto"
    text_precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = "auto"
    # Which runtime runs the towers: auto = ONNX Runtime on the CPU; on a CPU with native bf16, OpenVINO bf16
    # (the `openvino` extra; without it torch bf16 for images); torch on CUDA. See docs/BENCHMARKS.md.
    runtime: Literal["auto", "torch", "onnx", "openvino"] = "auto"
    # Exported (ONNX) towers, one entry per variant and weights; default: <cache_dir>/exports, else
    # $XDG_CACHE_HOME/pe-search/exports (~/.cache/pe-search/exports).
    export_dir: Path | None = None
    # Forward passes that may run at once, each on its share of the cores; 0 = chosen per core count.
    model_workers: int = Field(default=0, ge=0, le=64)
    # torch.compile each tower at load (slow start, faster passes; mostly worth it on GPUs).
    compile: bool = False
    # Concurrent requests' items merged into one forward pass, waiting at most this long for company.
    microbatch: bool = True
    microbatch_max_items: int = Field(default=32, ge=1, le=1024)
    microbatch_wait_ms: float = Field(default=2.0, ge=0, le=1000)
    text_cache_size: int = Field(default=4096, ge=0)
    max_loaded_models: int = Field(default=2, ge=1, le=5)
    # Threads for one forward pass, any runtime; 0 = the cores shared among the model workers.
    torch_threads: int = Field(default=0, ge=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # URL images, refused as Roboflow does by default: plain http and bare IP hosts.
    url_input_enabled: bool = True
    url_allow_http: bool = False
    url_allow_ip_hosts: bool = False
    # Off by default so clients cannot point the server at the network it sits in.
    url_allow_private_hosts: bool = False
    url_connect_timeout: float = Field(default=5.0, gt=0)
    url_read_timeout: float = Field(default=15.0, gt=0)
    url_max_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    url_max_redirects: int = Field(default=3, ge=0, le=20)
    # Comma-separated host patterns (a domain covers its subdomains).
    url_allow_hosts: CommaList = ()
    url_deny_hosts: CommaList = ()

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in VARIANTS:
            raise ValueError(f"unknown model {value!r}; valid: {', '.join(VARIANTS)}")
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("device must be auto, cpu, cuda or cuda:N")

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'pe-search.db').resolve()}"

    @property
    def ingest_root_paths(self) -> tuple[Path, ...]:
        return tuple(Path(p).resolve() for p in self.ingest_roots if "://" not in p)

    @property
    def ingest_object_prefixes(self) -> tuple[str, ...]:
        return tuple(p for p in self.ingest_roots if "://" in p)

    @property
    def watched_folders(self) -> tuple[tuple[str, Path], ...]:
        """(collection, folder) per PE_SEARCH_WATCH_FOLDERS entry."""
        pairs = []
        for entry in self.watch_folders:
            name, sep, folder = entry.partition("=")
            pairs.append((name.strip(), Path(folder.strip())) if sep else ("default", Path(entry)))
        return tuple(pairs)

    def object_policy(self) -> ObjectPolicy:
        return ObjectPolicy(
            max_bytes=self.max_image_bytes,
            s3_endpoint_url=self.s3_endpoint_url,
            connect_timeout=self.object_connect_timeout,
            read_timeout=self.object_read_timeout,
            retries=self.object_retries,
        )

    @property
    def workers(self) -> int:
        """Model workers: as set, else `default_workers` (docs/BENCHMARKS.md, `bench runtime`)."""
        return self.model_workers or default_workers(os.cpu_count() or 1)

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "indexes"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    def cursor_key(self) -> bytes:
        return self.cursor_secret.encode("utf-8") if self.cursor_secret else secrets.token_bytes(32)

    @property
    def random_weights(self) -> bool:
        return self.weights == "random"

    def url_policy(self) -> UrlPolicy:
        return UrlPolicy(
            enabled=self.url_input_enabled,
            allow_http=self.url_allow_http,
            allow_ip_hosts=self.url_allow_ip_hosts,
            allow_private_hosts=self.url_allow_private_hosts,
            connect_timeout=self.url_connect_timeout,
            read_timeout=self.url_read_timeout,
            max_bytes=self.url_max_bytes,
            max_redirects=self.url_max_redirects,
            allow_hosts=self.url_allow_hosts,
            deny_hosts=self.url_deny_hosts,
        )
