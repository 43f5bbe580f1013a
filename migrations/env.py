"""Alembic environment: the URL comes from pe-search's settings unless a caller passes a connection."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from index.db import create_db_engine
from index.models import Base, schema_of

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from app.settings import Settings

    return Settings().db_url


def _run(connection: Connection) -> None:
    # Batch mode: SQLite cannot ALTER most things in place, so Alembic copies tables.
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        # Autogenerate compares only what this database should have (no PostgreSQL-only index on SQLite).
        include_object=schema_of(connection.dialect.name),
        # Each migration commits on its own, so one that copies data in committed batches (0004)
        # can resume after an interruption without the earlier ones being re-run.
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_db_engine(_url())
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
