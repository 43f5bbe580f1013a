"""Logging, applied once at process start (the CLI's entry point): log handlers belong to whoever owns
the process, and a test or an embedding application keeps its own. Inference threads are per session
(app/model/loading.py), and torch's pool is sized only where the loader builds a torch tower.
"""

from __future__ import annotations

import logging
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _DropRandomInitWarning(logging.Filter):
    """open_clip warns on the root logger that a model built without weights is random; the encoder
    builds that way and then loads its weights, so the warning would be false (random weights get ours)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


def configure_logging(level: str) -> None:
    """pe-search's loggers at `level`; others (open_clip logs progress on the root logger at INFO) at WARNING."""
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("app").setLevel(level.upper())
    root = logging.getLogger()
    if not any(isinstance(f, _DropRandomInitWarning) for f in root.filters):
        root.addFilter(_DropRandomInitWarning())
