"""Images in object storage (s3://, gs://, az://) through fsspec: streamed listings and bounded reads.

Credentials are never taken from a request or a setting of ours: each provider's own chain
(environment variables, profile files, instance metadata) supplies them, and nothing here
logs a filesystem's options. Only the endpoint (for S3-compatible servers such as MinIO),
timeouts and retries are ours to set.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from app.errors import PayloadTooLargeError, SourceError
from app.settings import ObjectPolicy

log = logging.getLogger(__name__)

# URL scheme -> (fsspec protocol, the pe-search extra that installs its filesystem).
SCHEMES: dict[str, tuple[str, str]] = {
    "s3": ("s3", "s3"),
    "gs": ("gcs", "gcs"),
    "gcs": ("gcs", "gcs"),
    "az": ("abfs", "azure"),
    "abfs": ("abfs", "azure"),
    "abfss": ("abfs", "azure"),
}


def object_scheme(value: str) -> str | None:
    """The scheme of an object-storage URL (`s3://bucket/key` -> "s3"), or None for anything else."""
    scheme, sep, rest = value.partition("://")
    return scheme.lower() if sep and rest and scheme.lower() in SCHEMES else None


def is_object_url(value: str) -> bool:
    return object_scheme(value) is not None


def split_url(url: str) -> tuple[str, str, str]:
    """(scheme, bucket, key prefix) of an object URL; refuses one without a bucket."""
    scheme = object_scheme(url)
    if scheme is None:
        raise SourceError(f"{url} is not an object-storage URL (s3://, gs:// or az://)")
    bucket, _, key = url.split("://", 1)[1].partition("/")
    if not bucket:
        raise SourceError(f"{url}: no bucket named")
    return scheme, bucket, key


def _segments(url: str) -> tuple[str, list[str]] | None:
    """(fsspec protocol, [bucket, key parts...]) of an object URL; None without a bucket, or with a `..`."""
    scheme = object_scheme(url)
    if scheme is None:
        return None
    parts = url.split("://", 1)[1].split("/")
    while len(parts) > 1 and parts[-1] == "":
        parts.pop()  # a trailing slash names the same folder
    if not parts[0] or ".." in parts:
        return None
    return SCHEMES[scheme][0], parts


def under_prefix(url: str, prefixes: tuple[str, ...]) -> bool:
    """Whether `url` lies under one of the allowed object prefixes, compared segment by segment.

    `s3://b/photos` admits `s3://b/photos/x.jpg` but not `s3://b/photos-private/x.jpg`; `gs://` and
    `gcs://` are one store. A URL or prefix with a `..` segment, or no bucket, matches nothing, since
    stores differ on what `..` means.
    """
    target = _segments(url)
    if target is None:
        return False
    for prefix in prefixes:
        allowed = _segments(prefix)
        if allowed is not None and allowed[0] == target[0] and target[1][: len(allowed[1])] == allowed[1]:
            return True
    return False


@dataclass(frozen=True)
class ObjectInfo:
    url: str
    size: int
    # The store's version tag of the content (S3 ETag, GCS etag): what the unchanged-skip compares.
    etag: str | None


def _etag(info: dict[str, Any]) -> str | None:
    for key in ("ETag", "etag", "md5Hash"):
        value = info.get(key)
        if value:
            return str(value).strip('"')
    return None


class ObjectStorage:
    """Listing and reading objects under an `ObjectPolicy` (endpoint, timeouts, retries, size limit)."""

    def __init__(self, policy: ObjectPolicy | None = None) -> None:
        self.policy = policy or ObjectPolicy()

    def filesystem(self, scheme: str) -> Any:
        protocol, extra = SCHEMES[scheme]
        try:
            import fsspec

            fs = fsspec.filesystem(protocol, **self._options(protocol))
        except ImportError:
            raise SourceError(f"{scheme}:// sources need the {extra} extra: pip install 'pe-search[{extra}]'") from None
        if protocol == "s3":
            # s3fs's own retry loop (on top of botocore's) is a class attribute, 5 by default: a dead
            # endpoint would take minutes to give up on.
            fs.retries = self.policy.retries
        return fs

    def _options(self, protocol: str) -> dict[str, Any]:
        # fsspec keeps filesystems, and their listings, for the process's life: a second job over a
        # prefix must see the objects added since the first.
        if protocol != "s3":
            return {"use_listings_cache": False}
        policy = self.policy
        config = {
            "connect_timeout": policy.connect_timeout,
            "read_timeout": policy.read_timeout,
            "retries": {"max_attempts": policy.retries},
        }
        options: dict[str, Any] = {"config_kwargs": config, "use_listings_cache": False}
        if policy.s3_endpoint_url:
            options["endpoint_url"] = policy.s3_endpoint_url
        return options

    def list(self, url: str) -> Iterator[ObjectInfo]:
        """Every object under the URL's prefix, page by page as the store returns them; never the whole listing.

        An empty listing is an error: a missing prefix is far likelier a typo than an empty library.
        """
        scheme, bucket, key = split_url(url)
        # The URL names a folder: `s3://b/photos` must not list `photos-private/`.
        key = key.rstrip("/") + "/" if key.strip("/") else ""
        fs = self.filesystem(scheme)
        listed = 0
        try:
            for info in _stream(fs, scheme, bucket, key):
                listed += 1
                name = str(info["name"])
                yield ObjectInfo(url=f"{scheme}://{name}", size=int(info.get("size") or 0), etag=_etag(info))
        except SourceError:
            raise
        except Exception as exc:  # noqa: BLE001 - every store library raises its own types; all end the listing
            raise SourceError(f"cannot list {url}: {describe(exc)}") from exc
        if listed == 0:
            raise SourceError(f"no objects under {url} (check the bucket and prefix)")

    def read(self, url: str) -> tuple[bytes, str | None]:
        """The object's bytes and ETag, refusing one over `max_bytes` before reading its body."""
        scheme, bucket, key = split_url(url)
        fs = self.filesystem(scheme)
        path = f"{bucket}/{key}"
        try:
            with fs.open(path, "rb") as handle:
                size = getattr(handle, "size", None)
                if size is not None and size > self.policy.max_bytes:
                    raise PayloadTooLargeError(
                        f"the object is {size} bytes, over the {self.policy.max_bytes}-byte limit"
                    )
                data = handle.read(self.policy.max_bytes + 1)
                details = getattr(handle, "details", None) or {}
        except PayloadTooLargeError:
            raise
        except FileNotFoundError:
            raise OSError(f"no such object: {url}") from None
        except Exception as exc:  # noqa: BLE001 - as in list(): one bad object must not stop the run
            raise OSError(describe(exc)) from exc
        if len(data) > self.policy.max_bytes:
            raise PayloadTooLargeError(f"the object is over the {self.policy.max_bytes}-byte limit")
        return data, _etag(details)


def _stream(fs: Any, scheme: str, bucket: str, key: str) -> Iterator[dict[str, Any]]:
    """Object infos under bucket/key. S3 streams list pages (no delimiter: the whole tree in one
    paged listing); other stores are walked a folder at a time, which keeps one folder in memory."""
    if scheme == "s3" and hasattr(fs, "_iterdir"):
        from fsspec.asyn import sync

        pages = fs._iterdir(bucket, delimiter="", prefix=key)
        while True:
            try:
                info = sync(fs.loop, pages.__anext__)
            except StopAsyncIteration:
                return
            if info.get("type") == "file" and not str(info["name"]).endswith("/"):
                yield info
    else:
        for _, _, files in fs.walk(f"{bucket}/{key}", detail=True):
            yield from (info for _, info in sorted(files.items()))


def describe(exc: BaseException) -> str:
    """A store error as one readable line: missing bucket, denied access, unreachable endpoint, or the raw text."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, FileNotFoundError):
        return f"the bucket or prefix does not exist ({text})"
    if isinstance(exc, PermissionError):
        return f"access denied: check the credentials (environment, profile) and the bucket's policy ({text})"
    if any(isinstance(e, ConnectionError) or "Connect" in type(e).__name__ for e in _chain(exc)):
        # botocore's EndpointConnectionError, aiohttp's ClientConnectorError, or the OS's own.
        return f"the object store is unreachable ({text})"
    return f"{type(exc).__name__}: {text}"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
