"""The application's domain errors, on the categories `index.errors` roots (re-exported here).

Each category maps to one HTTP status in `app.api.errors`, and nowhere else.
"""

from __future__ import annotations

from index.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    PESearchError,
    UnavailableError,
)

__all__ = [
    "AuthError",
    "ConflictError",
    "ForbiddenPathError",
    "ImageLoadError",
    "InvalidInputError",
    "ModelUnavailableError",
    "NotFoundError",
    "PayloadTooLargeError",
    "RayIngestError",
    "RaySetupError",
    "RayUnavailableError",
    "PermissionDeniedError",
    "PESearchError",
    "SourceError",
    "TooManyItemsError",
    "UnavailableError",
    "UnprocessableQueryError",
    "CursorError",
    "UnknownModelError",
    "UnsupportedMediaError",
    "WeightsError",
    "BackupError",
    "DamagedBackupError",
]


class ImageLoadError(InvalidInputError):
    """An image could not be turned into pixels (bad base64, not an image, refused URL...)."""

    def __init__(self, cause: str) -> None:
        self.cause = cause
        super().__init__(f"Could not load input image. Cause: {cause}")


class UnknownModelError(InvalidInputError):
    """A version id that names no PE-Core variant."""

    def __init__(self, version_id: str, valid: list[str]) -> None:
        self.version_id = version_id
        super().__init__(f"Unknown perception_encoder_version_id {version_id!r}. Valid ids: {', '.join(valid)}.")


class PayloadTooLargeError(InvalidInputError):
    """A request body, image or text over its configured limit."""


class TooManyItemsError(PayloadTooLargeError):
    """More items in one request than PE_SEARCH_MAX_BATCH allows."""

    def __init__(self, count: int, limit: int) -> None:
        self.count = count
        self.limit = limit
        super().__init__(
            f"Too many items in one request: {count} given, at most {limit} allowed "
            "(set PE_SEARCH_MAX_BATCH to change the limit)."
        )


class UnprocessableQueryError(InvalidInputError):
    """A search query that is well-formed but cannot be searched: no parts, only negative parts, parts
    that cancel out, or a vector of the wrong length (422)."""


class CursorError(InvalidInputError):
    """A paging cursor that is damaged, of another collection, or from an older index (400: search again)."""


class ModelUnavailableError(UnavailableError):
    """The model asked for is not loaded and cannot be loaded right now."""


class WeightsError(ModelUnavailableError):
    """A checkpoint could not be found, downloaded, read, or matched to the variant."""


class ForbiddenPathError(PermissionDeniedError):
    """A server-side path outside the configured roots."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"{path} is not under a folder this server may read (set PE_SEARCH_INGEST_ROOTS to allow one)."
        )


class AuthError(PESearchError):
    """No API key, or one that is not valid (401)."""


class UnsupportedMediaError(PESearchError):
    """A request body in a content type the route does not take (415)."""


class SourceError(InvalidInputError):
    """An ingest source that cannot be read at all (a missing folder, a manifest without a path column)."""


class RayUnavailableError(PESearchError):
    def __init__(self) -> None:
        super().__init__("the Ray engine needs Ray: pip install 'pe-search[ray]'")


class RaySetupError(PESearchError):
    """This process's environment would let a local Ray instance listen beyond loopback, or send usage stats."""


class RayIngestError(PESearchError):
    """The actor pool failed as a whole (an actor could not load the model, a node died, the pool stalled).

    Batches committed before stay; a re-run skips them and carries on.
    """

    def __init__(self, cause: str) -> None:
        self.cause = cause
        super().__init__(f"the Ray ingest stopped; what was committed stays, re-run to resume: {cause}")


class BackupError(PESearchError):
    """A backup or restore that cannot be done: a DEST or data dir in use, pg_dump missing or failing."""


class DamagedBackupError(BackupError):
    """A backup that fails verification (a file missing, truncated or altered, a broken manifest or database)."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        super().__init__(f"damaged backup: {where}: {problem}; nothing was restored")
