"""Opening the store from the settings; imports no model code, so the CLI's store-only commands start fast."""

from __future__ import annotations

import tempfile
from pathlib import Path

from app.settings import Settings
from index.db import create_db_engine
from index.errors import DataDirError
from index.store import VectorStore
from index.tuning import TuningGoal


def check_data_dir(path: Path) -> None:
    """Fail at start-up, with the reason, rather than at the first write."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise DataDirError(
            f"The data dir {path} is not a writable folder ({exc.strerror or exc}); set PE_SEARCH_DATA_DIR."
        ) from exc


def open_store(settings: Settings) -> VectorStore:
    """The store of the configured database and data dir, migrated (unless read-only) and loaded."""
    check_data_dir(settings.data_dir)
    return VectorStore(
        engine=create_db_engine(settings.db_url),
        index_dir=settings.index_dir,
        memory_budget=settings.index_memory_budget,
        index_mmap=settings.index_mmap,
        read_only=settings.read_only,
        rerank_dtype=None if settings.rerank_vectors == "off" else settings.rerank_vectors,
        tuning=TuningGoal(settings.target_recall, settings.latency_budget_ms) if settings.autotune else None,
    ).open()
