"""Migration 0004 on populated databases (SQLite and PostgreSQL): vectors move to their own table,
in committed batches, and an interrupted upgrade resumes where it stopped.

The databases are filled at revision 0003 through the schema as it was then (reflected, not
the current models), the way a user's database looks before upgrading.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from alembic import command
from sqlalchemy import Engine, MetaData, inspect, select

from index.db import (
    alembic_config,
    create_db_engine,
    current_revision,
    head_revision,
    upgrade_database,
)
from index.store import VectorStore
from tests.support.sql import load_migration
from tests.support.store import DIM, MODEL, clustered

ROWS = 2_500


def _at_revision(engine: Engine, revision: str) -> None:
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def _populate_0003(engine: Engine, vectors: np.ndarray) -> None:
    """A collection of ROWS images with vectors in the image rows, plus their sources."""
    tables = MetaData()
    tables.reflect(engine)
    now = datetime.now(UTC).replace(tzinfo=None)
    with engine.begin() as connection:
        connection.execute(
            tables.tables["collections"].insert(),
            [
                {
                    "id": 1,
                    "name": "photos",
                    "model": MODEL,
                    "dim": DIM,
                    "metric": "cosine",
                    "index_type": "flat",
                    "index_params": {},
                    "generation": 0,
                    "created_at": now,
                }
            ],
        )
        rows = [
            {
                "id": i + 1,
                "collection_id": 1,
                "sha256": f"{i:064x}",
                "uri": f"/p/{i}.jpg",
                "width": 4,
                "height": 3,
                "format": "JPEG",
                "byte_size": 100 + i,
                "metadata": {"n": i},
                "vector": vectors[i].astype("<f4").tobytes(),
                "created_at": now,
                "updated_at": now,
            }
            for i in range(len(vectors))
        ]
        connection.execute(tables.tables["images"].insert(), rows)
        connection.execute(
            tables.tables["sources"].insert(),
            [
                {"collection_id": 1, "image_id": i + 1, "uri": f"/p/{i}.jpg", "root": "/p", "size": 1, "mtime": 1.0}
                for i in range(len(vectors))
            ],
        )


def _stored_vectors(engine: Engine) -> dict[int, bytes]:
    tables = MetaData()
    tables.reflect(engine)
    table = tables.tables["image_vectors"]
    with engine.connect() as connection:
        return dict(connection.execute(select(table.c.image_id, table.c.vector)).all())


@pytest.fixture()
def old_database(db_url: str) -> tuple[Engine, np.ndarray]:
    engine = create_db_engine(db_url)
    _at_revision(engine, "0003")
    vectors = clustered(ROWS, seed=4)
    _populate_0003(engine, vectors)
    yield engine, vectors
    engine.dispose()


def test_upgrade_moves_every_vector_and_keeps_every_image(old_database, tmp_path: Path) -> None:
    engine, vectors = old_database
    upgrade_database(engine)
    assert current_revision(engine) == head_revision()
    assert "vector" not in {c["name"] for c in inspect(engine).get_columns("images")}
    moved = _stored_vectors(engine)
    assert sorted(moved) == list(range(1, ROWS + 1))
    assert all(moved[i + 1] == vectors[i].astype("<f4").tobytes() for i in range(ROWS))
    # The store built on the upgraded database answers as brute force does, and metadata survived.
    store = VectorStore(engine=engine, index_dir=tmp_path / "indexes").open()
    collection = store.collection("photos")
    query = vectors[17]
    hits = store.search(collection.id, query, 5)
    assert [h.id for h in hits] == (np.argsort(-(vectors @ query), kind="stable")[:5] + 1).tolist()
    assert store.image(18).meta == {"n": 17}
    assert store.vector(18)[1].tobytes() == vectors[17].astype("<f4").tobytes()


def test_an_interrupted_upgrade_resumes_after_the_last_committed_batch(old_database) -> None:
    engine, vectors = old_database
    migration = load_migration("0004_image_vectors.py")
    # What a run killed mid-copy leaves: the new table, two batches committed, the revision still 0003.
    with engine.connect() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE image_vectors (image_id INTEGER NOT NULL PRIMARY KEY "
            "REFERENCES images (id) ON DELETE CASCADE, vector BYTEA NOT NULL)".replace(
                "BYTEA", "BLOB" if engine.dialect.name == "sqlite" else "BYTEA"
            )
        )
        connection.commit()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        assert migration.copy_vectors(connection, batch=1_000, max_batches=2) == 2_000
    assert current_revision(engine) == "0003"
    assert len(_stored_vectors(engine)) == 2_000
    upgrade_database(engine)
    moved = _stored_vectors(engine)
    assert sorted(moved) == list(range(1, ROWS + 1))  # each once: nothing copied twice, nothing skipped
    assert all(moved[i + 1] == vectors[i].astype("<f4").tobytes() for i in range(ROWS))
    assert current_revision(engine) == head_revision()


def test_downgrade_puts_the_vectors_back_in_the_image_rows(old_database) -> None:
    engine, vectors = old_database
    upgrade_database(engine)
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0003")
    assert not inspect(engine).has_table("image_vectors")
    tables = MetaData()
    tables.reflect(engine)
    images = tables.tables["images"]
    with engine.connect() as connection:
        back = dict(connection.execute(select(images.c.id, images.c.vector)).all())
    assert all(back[i + 1] == vectors[i].astype("<f4").tobytes() for i in range(ROWS))
