"""The root of pe-search's error hierarchy, and the vector store's own errors.

It starts here, in the lowest layer, so that every layer above can raise errors of the same
few categories. Each category maps to one HTTP status in `app.api.errors` and nowhere else;
the CLI prints any `PESearchError` as one line.
"""

from __future__ import annotations


class PESearchError(Exception):
    """Base of every error pe-search reports to a caller (an HTTP client or a CLI user)."""


class InvalidInputError(PESearchError):
    """The request is well-formed but asks for something that cannot be done (400)."""


class PermissionDeniedError(PESearchError):
    """Not allowed here: a read-only process, a path outside the allowed roots, a read-only key (403)."""


class NotFoundError(PESearchError):
    """Something the caller named does not exist (404)."""


class ConflictError(PESearchError):
    """The request contradicts what is stored: a name taken, another model's collection (409)."""


class UnavailableError(PESearchError):
    """A resource the request needs cannot be had right now, e.g. a model that failed to load (503)."""


class StoreError(PESearchError):
    """Base of the vector store's errors; one without a category is a server-side fault (500)."""


class DataDirError(StoreError):
    """The data dir cannot hold the database, indexes and uploads."""


class CollectionNotFoundError(StoreError, NotFoundError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"No collection named {name!r}.")


class CollectionExistsError(StoreError, ConflictError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"A collection named {name!r} already exists.")


class ModelMismatchError(StoreError, ConflictError):
    """A query or insert through a model other than the one that built the collection."""

    def __init__(self, collection: str, collection_model: str, dim: int, model: str) -> None:
        super().__init__(
            f"Collection {collection!r} was built with {collection_model} ({dim}-d vectors); "
            f"it cannot be used with {model}. Use a collection of that model, or "
            f"`pe-search reindex --collection {collection} --model {model}`."
        )


class ImageNotFoundError(StoreError, NotFoundError):
    def __init__(self, image_id: int) -> None:
        self.image_id = image_id
        super().__init__(f"No image with id {image_id}.")


class InvalidFilterError(StoreError, InvalidInputError):
    """A search filter that cannot be applied."""


class IncompleteStagingError(StoreError):
    """A model switch asked for while some images have no vector from the new model."""

    def __init__(self, collection: str, missing: int) -> None:
        super().__init__(f"{missing} images of {collection!r} have no vector from the new model; nothing was changed.")


class MissingVectorError(StoreError):
    """New content reached the store without a vector (it was deleted after the batch was embedded)."""

    def __init__(self, shas: list[str]) -> None:
        self.shas = shas
        super().__init__(f"{len(shas)} new images have no vector")


class ReadOnlyError(StoreError, PermissionDeniedError):
    """A write asked of a store opened read-only (an API process beside the one writer)."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"This pe-search process is read-only (PE_SEARCH_READ_ONLY): it cannot {what}. "
            "Send writes to the writer process."
        )


class SchemaOutdatedError(StoreError):
    """A read-only process found the database at another schema revision than its code."""

    def __init__(self, current: str | None, head: str) -> None:
        super().__init__(
            f"The database is at schema revision {current or 'none'}, this pe-search needs {head}; a read-only "
            "process does not migrate: run `pe-search db upgrade` (or start the writer) first."
        )
