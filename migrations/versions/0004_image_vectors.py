"""Vectors in their own table, and each collection's tuned search parameters.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

Existing vectors are copied in batches of COPY_BATCH rows, each batch committed on its own, so
an interrupted upgrade (a kill, a full disk) keeps what it copied and the next run continues
after the highest image id already in `image_vectors`. Only once every row is copied is the
old column dropped, in the transaction that stamps this revision.

SQLite drops the column in place (ALTER TABLE ... DROP COLUMN, SQLite 3.35+): the batch-mode
table copy Alembic would otherwise do drops `images`, and with foreign keys on that cascades
to every row that references it. The freed pages stay in the file until a VACUUM.
"""
from __future__ import annotations

import sqlite3

from alembic import op
import sqlalchemy as sa
from sqlalchemy.engine import Connection


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

COPY_BATCH = 10_000


def copy_vectors(connection: Connection, *, batch: int = COPY_BATCH, max_batches: int | None = None) -> int:
    """Copy images.vector into image_vectors after the last id copied; returns rows copied this call.

    Run on a connection in autocommit mode: each batch is one INSERT ... SELECT in id order,
    committed by itself, so the highest copied id is always a complete prefix and the resume
    point needs no bookkeeping of its own.
    """
    copied = 0
    done = 0
    while max_batches is None or done < max_batches:
        last = connection.execute(sa.text('SELECT COALESCE(MAX(image_id), 0) FROM image_vectors')).scalar_one()
        result = connection.execute(
            sa.text(
                'INSERT INTO image_vectors (image_id, vector) '
                'SELECT id, vector FROM images WHERE id > :last ORDER BY id LIMIT :batch'
            ),
            {'last': last, 'batch': batch},
        )
        done += 1
        if not result.rowcount:
            break
        copied += result.rowcount
    return copied


def upgrade() -> None:
    bind = op.get_bind()
    if not sa.inspect(bind).has_table('image_vectors'):  # present already when resuming
        op.create_table(
            'image_vectors',
            sa.Column('image_id', sa.Integer(), nullable=False),
            sa.Column('vector', sa.LargeBinary(), nullable=False),
            sa.ForeignKeyConstraint(['image_id'], ['images.id'], ondelete='CASCADE'),
            sa.PrimaryKeyConstraint('image_id'),
        )
    if 'vector' in {c['name'] for c in sa.inspect(bind).get_columns('images')}:
        with op.get_context().autocommit_block():
            copy_vectors(op.get_bind())
        _drop_column('images', 'vector')
    if 'tuned_params' not in {c['name'] for c in sa.inspect(op.get_bind()).get_columns('collections')}:
        op.add_column('collections', sa.Column('tuned_params', sa.JSON(), nullable=False, server_default='{}'))


def _drop_column(table: str, column: str) -> None:
    if op.get_bind().dialect.name != 'sqlite':
        op.drop_column(table, column)
        return
    if sqlite3.sqlite_version_info < (3, 35):
        raise RuntimeError(f'SQLite {sqlite3.sqlite_version} cannot drop a column in place; 3.35 or newer is needed')
    op.execute(f'ALTER TABLE {table} DROP COLUMN {column}')


def downgrade() -> None:
    # The restored column is nullable: making it NOT NULL on SQLite needs the table copy avoided above.
    _drop_column('collections', 'tuned_params')
    op.add_column('images', sa.Column('vector', sa.LargeBinary(), nullable=True))
    op.execute(
        'UPDATE images SET vector = (SELECT v.vector FROM image_vectors v WHERE v.image_id = images.id)'
    )
    op.drop_table('image_vectors')
