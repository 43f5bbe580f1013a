"""Migration 0005: the GIN index on images.metadata (PostgreSQL only), which the metadata filters use.

Metadata filters are jsonb containment tests (index/filters.py). After the upgrade the index is
there with the `jsonb_path_ops` class, EXPLAIN of the very statement `crud.filtered_ids` sends
shows a Bitmap Index Scan on it, and the filtered ids and searches are the same with the index
as without it (a seq scan evaluating `@>` row by row). A real PostgreSQL server on loopback.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, Engine, event, inspect, text
from sqlalchemy.orm import Session

from index import crud
from index.db import (
    _MIGRATION_LOCK,
    alembic_config,
    create_db_engine,
    current_revision,
    head_revision,
    upgrade_database,
)
from index.filters import SearchFilter
from index.models import Base, schema_of
from index.store import VectorStore
from tests.support.sql import load_migration, statements
from tests.support.store import DIM, MODEL, add, clustered, open_store

INDEX = "ix_images_metadata_gin"
ROWS = 3_000
DEADLINE_S = 30


def _alembic(engine: Engine, action: Callable[..., None], revision: str) -> None:
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        action(config, revision)


def _index_definition(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return connection.execute(
            text("SELECT indexdef FROM pg_indexes WHERE tablename = 'images' AND indexname = :name"), {"name": INDEX}
        ).scalar_one_or_none()


def _meta(i: int) -> dict[str, Any]:
    """A selective key (`group`: 3 rows a value), a broad one, and values of every type a filter takes."""
    odd: list[Any] = [7, 7.0, "7", True, 100.0, "ünï", False, 0]
    return {"group": i % 1000, "shade": "dark" if i % 2 else "light", "odd": odd[i % len(odd)], "n": i}


FILTERS: list[dict[str, Any]] = [
    {"group": 17},
    {"group": 17, "shade": "dark"},
    {"group": [3, 999, 12345]},  # membership: one containment test per value, OR-ed
    {"odd": 7},  # 7 and 7.0 (numbers by value), not "7" nor true
    {"odd": 7.0},
    {"odd": "7"},
    {"odd": True},
    {"odd": 1},  # true is no number
    {"odd": 100},
    {"odd": "ünï"},
    {"odd": 0},
    {"odd": False},
    {"shade": "light", "odd": [False, "ünï"]},
    {"missing": 1},
]


def _expected(search_filter: dict[str, Any], ids: list[int]) -> list[int]:
    """The reference in Python: jsonb equality (numbers by value, booleans only booleans, strings only strings)."""

    def same(stored: Any, wanted: Any) -> bool:
        if isinstance(stored, bool) or isinstance(wanted, bool):
            return stored is wanted
        return bool(stored == wanted)  # 7 == 7.0, "7" != 7

    def match(meta: dict[str, Any]) -> bool:
        return all(
            key in meta and any(same(meta[key], v) for v in (value if isinstance(value, list) else [value]))
            for key, value in search_filter.items()
        )

    return sorted(image_id for i, image_id in enumerate(ids) if match(_meta(i)))


def _filtered(connection: Connection, collection_id: int, search_filter: dict[str, Any]) -> tuple[list[int], Any]:
    """`crud.filtered_ids` on this connection, with the statement it sent."""
    with statements(connection.engine) as sent, Session(bind=connection) as session:
        ids = crud.filtered_ids(
            session, collection_id=collection_id, search_filter=SearchFilter(metadata=search_filter)
        )
    [statement] = [s for s in sent if s[0].lstrip().upper().startswith("SELECT")]
    return sorted(ids.tolist()), statement


def _plan_nodes(connection: Connection, statement: tuple[str, Any]) -> list[dict[str, Any]]:
    sql, parameters = statement
    [[plan]] = connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {sql}", parameters).all()
    nodes, todo = [], [plan[0]["Plan"]]
    while todo:
        node = todo.pop()
        nodes.append(node)
        todo.extend(node.get("Plans", []))
    return nodes


def _index_scans(nodes: list[dict[str, Any]]) -> list[str]:
    return [n.get("Index Name", "") for n in nodes if n["Node Type"] == "Bitmap Index Scan"]


@pytest.fixture()
def filled(tmp_path: Path, postgres_url: str) -> Iterator[tuple[VectorStore, int, list[int], np.ndarray]]:
    store = open_store(tmp_path, postgres_url)
    collection = store.create_collection("photos", model=MODEL, dim=DIM, index_type="flat")
    vectors = clustered(ROWS, seed=15)
    ids = add(store, collection.id, vectors, meta=_meta)
    # VACUUM merges the index's pending list (rows inserted since are kept apart from its trees
    # and scanned in full by every query, which makes the planner price each scan 10x higher).
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM ANALYZE images")
    yield store, collection.id, ids, vectors
    store.engine.dispose()


def test_upgrade_builds_the_index_on_postgresql_only(db_url: str) -> None:
    engine = create_db_engine(db_url)
    upgrade_database(engine)
    indexed = {tuple(ix["column_names"]) for ix in inspect(engine).get_indexes("images")}
    if engine.dialect.name == "sqlite":
        assert ("metadata",) not in indexed
        assert INDEX not in {ix["name"] for ix in inspect(engine).get_indexes("images")}
    else:
        assert _index_definition(engine) == (
            f"CREATE INDEX {INDEX} ON public.images USING gin (metadata jsonb_path_ops)"
        )
    engine.dispose()


def test_the_models_declare_the_index_the_migrations_build(db_url: str) -> None:
    """No difference about this index between the models and the migrated schema, on either backend.

    Alembic's comparison ignores `Index.ddl_if`, so on SQLite it would ask to add the index the
    model declares for PostgreSQL only: objects whose conditional DDL excludes the dialect are left out.
    """
    engine = create_db_engine(db_url)
    upgrade_database(engine)

    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"include_object": schema_of(engine.dialect.name)})
        diff = compare_metadata(context, Base.metadata)
    assert [d for d in diff if INDEX in repr(d) or "metadata" in repr(d)] == []
    engine.dispose()


@pytest.mark.postgres
def test_downgrade_drops_the_index_and_the_upgrade_is_rerunnable(postgres_url: str) -> None:
    engine = create_db_engine(postgres_url)
    _alembic(engine, command.upgrade, "0005")
    assert _index_definition(engine) is not None
    migration = load_migration("0005_postgres_metadata_gin.py")
    with engine.begin() as connection:
        migration.create_index(connection)  # again: a no-op, not an error
    _alembic(engine, command.downgrade, "0004")
    assert current_revision(engine) == "0004"
    assert _index_definition(engine) is None
    # An invalid index of that name, as an interrupted CREATE INDEX CONCURRENTLY by hand leaves: rebuilt.
    with engine.connect() as connection:
        connection.exec_driver_sql(f"CREATE INDEX {INDEX} ON images USING gin (metadata jsonb_path_ops)")
        connection.exec_driver_sql(f"UPDATE pg_index SET indisvalid = false WHERE indexrelid = '{INDEX}'::regclass")
        connection.commit()
    _alembic(engine, command.upgrade, "head")
    with engine.connect() as connection:
        valid = connection.execute(
            text("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:name)"), {"name": INDEX}
        ).scalar_one()
    assert valid is True
    assert current_revision(engine) == head_revision()
    engine.dispose()


@pytest.mark.postgres
def test_processes_waiting_on_the_migration_lock_do_not_deadlock_with_the_build(postgres_url: str) -> None:
    """Another process starting meanwhile waits in `pg_advisory_lock` with a snapshot open: a
    CREATE INDEX CONCURRENTLY would wait for it while it waits for this migration, a deadlock."""
    engine = create_db_engine(postgres_url)
    _alembic(engine, command.upgrade, "0004")
    errors: list[BaseException] = []

    def second_process() -> None:
        other = create_db_engine(postgres_url)
        try:
            upgrade_database(other)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)
        finally:
            other.dispose()

    with engine.connect() as holder:
        holder.exec_driver_sql("SELECT pg_advisory_lock(%s, %s)", _MIGRATION_LOCK)
        holder.commit()
        waiter = threading.Thread(target=second_process, daemon=True)
        waiter.start()
        for _ in range(DEADLINE_S * 100):
            waiting = holder.exec_driver_sql(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            ).scalar_one()
            holder.commit()
            if waiting:
                break
            threading.Event().wait(0.01)
        assert waiting, "the second process never waited on the migration lock"
        config = alembic_config(engine.url.render_as_string(hide_password=False))
        config.attributes["connection"] = holder
        command.upgrade(config, "head")  # as upgrade_database runs it, the lock held
        holder.rollback()
        holder.exec_driver_sql("SELECT pg_advisory_unlock(%s, %s)", _MIGRATION_LOCK)
        holder.commit()
        waiter.join(DEADLINE_S)
    assert not waiter.is_alive()
    assert errors == [], errors
    assert current_revision(engine) == head_revision()
    assert _index_definition(engine) is not None
    engine.dispose()


@pytest.mark.postgres
def test_the_filtered_ids_query_scans_the_index(filled) -> None:
    store, collection_id, ids, _ = filled
    with store.engine.connect() as connection:
        connection.exec_driver_sql("SET enable_seqscan = off")  # 3,000 rows: a seq scan would cost less
        found, statement = _filtered(connection, collection_id, {"group": 17})
        assert found == _expected({"group": 17}, ids) and len(found) == 3
        assert "@>" in statement[0]
        assert _index_scans(_plan_nodes(connection, statement)) == [INDEX]
        # A list is one containment test per value, each its own scan of the index, OR-ed.
        found, statement = _filtered(connection, collection_id, {"group": [3, 999, 12345]})
        assert found == _expected({"group": [3, 999, 12345]}, ids) and len(found) == 6
        nodes = _plan_nodes(connection, statement)
        assert _index_scans(nodes) == [INDEX] * 3 and any(n["Node Type"] == "BitmapOr" for n in nodes)
        # Without the index (what a downgrade leaves) the same statement finds no such scan.
        connection.exec_driver_sql(f"DROP INDEX {INDEX}")
        found, statement = _filtered(connection, collection_id, {"group": 17})
        assert found == _expected({"group": 17}, ids)
        assert INDEX not in _index_scans(_plan_nodes(connection, statement))
        connection.rollback()


@pytest.mark.postgres
def test_the_planner_picks_the_index_by_itself_for_a_selective_filter(filled) -> None:
    store, collection_id, ids, _ = filled
    with store.engine.connect() as connection:
        _, statement = _filtered(connection, collection_id, {"group": 17, "shade": "dark"})
        assert _index_scans(_plan_nodes(connection, statement)) == [INDEX]


@contextmanager
def _seqscan_off(engine: Engine) -> Iterator[None]:
    """Every connection the engine opens while the block runs plans without seq scans (the pool emptied first)."""

    def off(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET enable_seqscan = off")

    engine.dispose()
    event.listen(engine, "connect", off)
    try:
        yield
    finally:
        event.remove(engine, "connect", off)
        engine.dispose()


@pytest.mark.postgres
def test_results_are_the_same_with_and_without_the_index(filled) -> None:
    store, collection_id, ids, _ = filled
    queries = clustered(3, seed=16)

    def searches() -> dict[str, list[list[int]]]:
        return {
            repr(f): [[h.id for h in store.search(collection_id, q, 5, SearchFilter(metadata=f))] for q in queries]
            for f in FILTERS
        }

    indexed: dict[str, list[int]] = {}
    with _seqscan_off(store.engine):
        with store.engine.connect() as connection:
            for search_filter in FILTERS:
                found, statement = _filtered(connection, collection_id, search_filter)
                assert INDEX in _index_scans(_plan_nodes(connection, statement)), search_filter  # the index answered
                indexed[repr(search_filter)] = found
        searched = searches()
    with store.engine.connect() as connection:
        connection.exec_driver_sql(f"DROP INDEX {INDEX}")
        connection.commit()
    store.engine.dispose()
    with store.engine.connect() as connection:
        for search_filter in FILTERS:
            found, statement = _filtered(connection, collection_id, search_filter)
            assert _index_scans(_plan_nodes(connection, statement)) == []
            assert found == indexed[repr(search_filter)] == _expected(search_filter, ids), search_filter
    assert searches() == searched
    # Not vacuous: the filters matched none, a few and many rows, over every value type.
    sizes = sorted(len(v) for v in indexed.values())
    assert sizes[0] == 0 and 3 in sizes and sizes[-1] > 300
    assert all(len(hits) == min(5, len(indexed[f])) for f, per_query in searched.items() for hits in per_query)
