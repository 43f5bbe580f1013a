"""Paths of this API's own routes that responses link to."""

from __future__ import annotations


def file_url(image_id: int) -> str:
    """Where a stored image's file is served (`GET /images/{id}/file`)."""
    return f"/images/{image_id}/file"
