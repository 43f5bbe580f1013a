"""API keys: read-only keys may embed and search; write keys may also ingest, edit and delete."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Literal

from app.settings import Settings

Scope = Literal["read", "write"]


@dataclass(frozen=True)
class KeyRing:
    write: tuple[str, ...] = ()
    read: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        write, read = list(settings.api_keys), list(settings.read_api_keys)
        if settings.api_keys_file is not None:
            for number, line in enumerate(settings.api_keys_file.read_text().splitlines(), start=1):
                parts = line.split("#", 1)[0].split()
                if not parts:
                    continue
                scope = parts[1] if len(parts) > 1 else "write"
                if scope not in ("read", "write") or len(parts) > 2:
                    raise ValueError(f"{settings.api_keys_file}:{number}: expected `KEY [read|write]`")
                (write if scope == "write" else read).append(parts[0])
        return cls(tuple(write), tuple(read))

    @property
    def enabled(self) -> bool:
        return bool(self.write or self.read)

    def scope_of(self, key: str) -> Scope | None:
        """Compares against every key in constant time, so timing reveals neither key nor match."""
        candidate = key.encode()
        is_write = any([hmac.compare_digest(candidate, k.encode()) for k in self.write])
        is_read = any([hmac.compare_digest(candidate, k.encode()) for k in self.read])
        return "write" if is_write else "read" if is_read else None
