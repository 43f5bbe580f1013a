"""Uploaded image bytes under the data dir, content-addressed by sha256."""

from __future__ import annotations

from pathlib import Path

from index.files import atomic_write

UPLOAD_SCHEME = "upload://"


class UploadFiles:
    """Uploaded bytes under the data dir, named by their sha256."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, sha256: str) -> Path:
        return self.directory / sha256[:2] / sha256

    def save(self, data: bytes, sha256: str) -> None:
        target = self.path(sha256)
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda tmp: tmp.write_bytes(data))
