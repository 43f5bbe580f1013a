"""Search filters: metadata equality and membership, uri prefix, created range, as SQL conditions."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, or_

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


def _equals(key: str, value: Scalar) -> ColumnElement[bool]:
    if not _KEY.match(key):
        raise InvalidFilterError(f"metadata filter keys are letters, digits, _ . and - (got {key!r})")
    field_ = Image.meta[key]
    # bool before int, since True is an int in Python. SQLite's JSON functions still read
    # true as 1, so {"n": true} also matches n == 1 there.
    if isinstance(value, bool):
        return field_.as_boolean() == value
    if isinstance(value, (int, float)):
        return field_.as_float() == float(value)
    if isinstance(value, str):
        return field_.as_string() == value
    raise InvalidFilterError(f"metadata filter {key!r}: values must be strings, numbers or booleans")


def conditions(search_filter: SearchFilter) -> list[ColumnElement[bool]]:
    out: list[ColumnElement[bool]] = []
    for key, value in search_filter.metadata.items():
        if isinstance(value, list):
            if not value:
                raise InvalidFilterError(f"metadata filter {key!r}: the list of values is empty")
            out.append(or_(*(_equals(key, v) for v in value)))
        else:
            out.append(_equals(key, value))
    if search_filter.uri_prefix:
        prefix = search_filter.uri_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        out.append(Image.uri.like(prefix + "%", escape="\\"))
    if search_filter.created_after:
        out.append(Image.created_at >= search_filter.created_after)
    if search_filter.created_before:
        out.append(Image.created_at < search_filter.created_before)
    return [and_(*out)] if out else []
