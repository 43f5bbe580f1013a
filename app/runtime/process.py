"""Process-wide settings, applied once at process start (the CLI's entry point, a Ray actor's start).

Library code never sets them: thread counts and log handlers belong to whoever owns the process,
and a test or an embedding application keeps its own.
"""

from __future__ import annotations

import logging
import sys

from app.settings import Settings

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


def configure_threads(settings: Settings) -> None:
    """Threads for one forward pass (PE_SEARCH_TORCH_THREADS); 0 keeps PyTorch's default of one per core."""
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)


def configure_process(settings: Settings) -> None:
    configure_logging(settings.log_level)
    configure_threads(settings)
