"""Search filters: metadata equality and membership, uri prefix, created range, as SQL conditions."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, type_coerce
from sqlalchemy.dialects.postgresql import JSONB

from index.errors import InvalidFilterError
from index.models import Image

Scalar = str | int | float | bool


@dataclass(frozen=True)
class SearchFilter:
    """`metadata`: key -> value (equality) or list of values (membership)."""

    metadata: dict[str, Any] = field(default_factory=dict)
    uri_prefix: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None

    @property
    def empty(self) -> bool:
        return not (self.metadata or self.uri_prefix or self.created_after or self.created_before)


_KEY = re.compile(r"^[\w.-]{1,100}$")


def _equals(key: str, value: Scalar, dialect: str) -> ColumnElement[bool]:
    if not _KEY.match(key):
        raise InvalidFilterError(f"metadata filter keys are letters, digits, _ . and - (got {key!r})")
    if not isinstance(value, (str, int, float)):  # bool is an int
        raise InvalidFilterError(f"metadata filter {key!r}: values must be strings, numbers or booleans")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidFilterError(f"metadata filter {key!r}: numbers must be finite")
    if dialect == "postgresql":
        # jsonb containment: numbers compare by value (7 matches 7.0), booleans only booleans,
        # strings only strings; no cast, so a key holding mixed types never fails the query.
        return type_coerce(Image.meta, JSONB).contains({key: value})
    # The same typed comparison on SQLite: json_type first, since json_extract reads true as 1.
    path = f'$."{key}"'  # the key pattern admits no quote
    if isinstance(value, bool):
        return func.json_type(Image.meta, path) == ("true" if value else "false")
    extracted = func.json_extract(Image.meta, path)
    if isinstance(value, str):
        return and_(func.json_type(Image.meta, path) == "text", extracted == value)
    # As a float: SQLite compares 7 and 7.0 equal, and cannot bind ints beyond 64 bits.
    return and_(func.json_type(Image.meta, path).in_(("integer", "real")), extracted == float(value))


def conditions(search_filter: SearchFilter, *, dialect: str) -> list[ColumnElement[bool]]:
    """The filter as SQL for the named database dialect (JSON operators differ)."""
    out: list[ColumnElement[bool]] = []
    for key, value in search_filter.metadata.items():
        if isinstance(value, list):
            if not value:
                raise InvalidFilterError(f"metadata filter {key!r}: the list of values is empty")
            out.append(or_(*(_equals(key, v, dialect) for v in value)))
        else:
            out.append(_equals(key, value, dialect))
    if search_filter.uri_prefix:
        prefix = search_filter.uri_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        out.append(Image.uri.like(prefix + "%", escape="\\"))
    if search_filter.created_after:
        out.append(Image.created_at >= search_filter.created_after)
    if search_filter.created_before:
        out.append(Image.created_at < search_filter.created_before)
    return [and_(*out)] if out else []
