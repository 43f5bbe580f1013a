"""PESearchClient: one requests.Session to one pe-search server, each route as a typed method."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote, urljoin

import numpy as np
import requests

from app.client.models import (
    AddedImage,
    Collection,
    ImageInput,
    ImageRecord,
    IndexType,
    IngestJob,
    IngestKind,
    PESearchAPIError,
    SearchHit,
    parse_collection,
    parse_job,
)
from app.client.search_api import SearchMethods
from app.client.wire import chunks, error_message, image_bytes, image_object, is_url


class PESearchClient(SearchMethods):
    """Client for one pe-search server. Not thread-safe to share across threads (one requests.Session)."""

    def __init__(self, api_url: str, api_key: str | None = None, timeout: float = 60) -> None:
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()
        if api_key:
            self._session.headers["Authorization"] = f"Bearer {api_key}"

    # --- plumbing --------------------------------------------------------------------------

    def close(self) -> None:
        """Close the underlying HTTP session."""
        self._session.close()

    def __enter__(self) -> PESearchClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PESearchClient(api_url={self.api_url!r})"  # never the key

    def _request(self, method: str, route: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        response = self._session.request(method, f"{self.api_url}{route}", **kwargs)
        if not 200 <= response.status_code < 300:
            message, detail = error_message(response)
            raise PESearchAPIError(response.status_code, message, detail)
        return response

    def _json(self, method: str, route: str, **kwargs: Any) -> Any:
        return self._request(method, route, **kwargs).json()

    def _absolute(self, url: str) -> str:
        # The server's paths are root-relative; keep any path prefix api_url has (a reverse proxy's).
        return f"{self.api_url}{url}" if url.startswith("/") else urljoin(f"{self.api_url}/", url)

    def _hit(self, raw: dict[str, Any]) -> SearchHit:
        return SearchHit(
            id=raw["id"],
            score=raw["score"],
            uri=raw["uri"],
            width=raw["width"],
            height=raw["height"],
            format=raw.get("format"),
            metadata=raw.get("metadata") or {},
            file_url=self._absolute(raw["file_url"]),
        )

    def _record(self, raw: dict[str, Any]) -> ImageRecord:
        return ImageRecord(
            id=raw["id"],
            collection=raw["collection"],
            sha256=raw["sha256"],
            uri=raw["uri"],
            width=raw["width"],
            height=raw["height"],
            format=raw.get("format"),
            byte_size=raw["byte_size"],
            metadata=raw.get("metadata") or {},
            file_url=self._absolute(raw["file_url"]),
            created_at=datetime.fromisoformat(raw["created_at"]),
            updated_at=datetime.fromisoformat(raw["updated_at"]),
        )

    # --- images ----------------------------------------------------------------------------

    def add_image(
        self, image: ImageInput, metadata: Mapping[str, Any] | None = None, collection: str = "default"
    ) -> AddedImage:
        """Store and index one image; the same bytes twice give `created=False` and the first id."""
        if is_url(image):
            body = {"image": image_object(image), "metadata": dict(metadata or {}), "collection": collection}
            raw = self._json("POST", "/images", json=body)
        else:
            name = Path(image).name if isinstance(image, (str, Path)) else "image"
            raw = self._json(
                "POST",
                "/images",
                files={"file": (name, image_bytes(image), "application/octet-stream")},
                data={"metadata": json.dumps(dict(metadata or {}), allow_nan=False), "collection": collection},
            )
        return AddedImage(id=raw["id"], created=raw["created"], collection=raw["collection"])

    def get_image(self, image_id: int) -> ImageRecord:
        """One stored image's record."""
        return self._record(self._json("GET", f"/images/{int(image_id)}"))

    def download_image(self, image_id: int) -> bytes:
        """The stored image's file bytes (for URL-sourced images, the redirect is followed)."""
        return self._request("GET", f"/images/{int(image_id)}/file").content

    def update_metadata(self, image_id: int, patch: Mapping[str, Any]) -> ImageRecord:
        """Set metadata keys; a None value removes the key. Returns the updated record."""
        body = {"metadata": dict(patch)}
        return self._record(self._json("PATCH", f"/images/{int(image_id)}", json=body))

    def delete_image(self, image_id: int) -> None:
        """Delete an image from its collection and index."""
        self._request("DELETE", f"/images/{int(image_id)}")

    # --- collections -----------------------------------------------------------------------

    def collections(self) -> list[Collection]:
        """Every collection with its model, size and index."""
        return [parse_collection(raw) for raw in self._json("GET", "/collections")]

    def create_collection(self, name: str, model: str | None = None, index_type: IndexType = "auto") -> Collection:
        """Create an empty collection (model: a PE-Core id; the server's default when None)."""
        body: dict[str, Any] = {"name": name, "index_type": index_type}
        if model is not None:
            body["perception_encoder_version_id"] = model
        return parse_collection(self._json("POST", "/collections", json=body))

    def delete_collection(self, name: str) -> None:
        """Delete a collection, its images and its index."""
        self._request("DELETE", f"/collections/{quote(name, safe='')}")

    # --- ingest ----------------------------------------------------------------------------

    def ingest(
        self,
        source: str | Path,
        kind: IngestKind = "folder",
        collection: str = "default",
        wait: bool = True,
        poll_interval: float = 0.5,
        timeout: float = 3600,
        column: str | None = None,
        near_duplicates: Literal["warn", "skip"] | None = None,
    ) -> IngestJob:
        """Start a server-side ingest of a folder, manifest or URL list under PE_SEARCH_INGEST_ROOTS.

        With `wait`, poll until the job is done, failed or cancelled (a failed job is returned, not
        raised; check `status` and `error`); TimeoutError after `timeout` seconds. `near_duplicates`
        warn or skip: new images within PE_SEARCH_DUPLICATE_THRESHOLD of stored ones are reported or left out.
        """
        body: dict[str, Any] = {"source": str(source), "kind": kind, "collection": collection}
        if column is not None:
            body["column"] = column
        if near_duplicates is not None:
            body["near_duplicates"] = near_duplicates
        job = parse_job(self._json("POST", "/ingest", json=body))
        if not wait:
            return job
        deadline = time.monotonic() + timeout
        while not job.finished:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"Ingest job {job.id} still {job.status} after {timeout:g} s.")
            time.sleep(max(0.0, min(poll_interval, deadline - time.monotonic())))
            job = self.ingest_job(job.id)
        return job

    def ingest_job(self, job_id: str) -> IngestJob:
        """An ingest job's status, progress and summary."""
        return parse_job(self._json("GET", f"/ingest/{quote(job_id, safe='')}"))

    # --- embeddings (the Roboflow-compatible perception_encoder routes) ---------------------

    def embed_text(self, texts: str | Sequence[str], model: str | None = None, batch_size: int = 32) -> np.ndarray:
        """Unit-norm text embeddings, float32 of shape (len(texts), dim); sent `batch_size` per request."""
        items = [texts] if isinstance(texts, str) else list(texts)
        return self._embed("embed_text", "text", items, model, batch_size)

    def embed_images(
        self, images: ImageInput | Sequence[ImageInput], model: str | None = None, batch_size: int = 32
    ) -> np.ndarray:
        """Unit-norm image embeddings, float32 of shape (len(images), dim); sent `batch_size` per request."""
        items = [images] if isinstance(images, (str, Path, bytes, bytearray)) else list(images)
        return self._embed("embed_image", "image", [image_object(i) for i in items], model, batch_size)

    def _embed(self, route: str, field: str, items: list[Any], model: str | None, batch_size: int) -> np.ndarray:
        if not items:
            raise ValueError(f"Nothing to embed: give at least one {field}.")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1.")
        parts = []
        for chunk in chunks(items, batch_size):
            body: dict[str, Any] = {field: list(chunk)}
            if model is not None:
                body["perception_encoder_version_id"] = model
            response = self._json("POST", f"/perception_encoder/{route}", json=body)
            parts.append(np.asarray(response["embeddings"], dtype=np.float32))
        return np.concatenate(parts, axis=0)
