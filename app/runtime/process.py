"""Process-wide settings, applied once at process start (the CLI's entry point, a Ray actor's start).

Library code never sets them: thread counts and log handlers belong to whoever owns the process,
and a test or an embedding application keeps its own.
"""

from __future__ import annotations

import logging
import os
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
    """Torch's threads for one forward pass, where torch runs the towers: the cores shared among the model
    workers, or PE_SEARCH_TORCH_THREADS. The exported runtimes take theirs per session instead, and a process
    on them must not import torch for this."""
    if settings.runtime != "torch" and not settings.device.startswith("cuda"):
        return
    threads = settings.torch_threads or (
        max(1, (os.cpu_count() or 1) // settings.workers) if settings.workers > 1 else 0
    )
    if threads:
        import torch

        torch.set_num_threads(threads)


def configure_process(settings: Settings) -> None:
    configure_logging(settings.log_level)
    configure_threads(settings)
