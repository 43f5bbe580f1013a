"""PostgreSQL only: a GIN index on images.metadata, so metadata filters stop scanning every row.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

Metadata filters are jsonb containment tests and nothing else (index/filters.py: `metadata @>
'{"k": v}'`, one per value, OR-ed for a list), so the operator class is jsonb_path_ops: it
supports `@>` (and the jsonpath `@?`/`@@`), not the key-existence operators `?`, `?|`, `?&`
that no filter emits, and indexes one hash per path-and-value instead of one entry per key and
per value: smaller, and each containment test is a single lookup. SQLite is left as it is.

Not CREATE INDEX CONCURRENTLY: a concurrent build waits for every transaction in the database
holding an older snapshot, and the other processes starting together are exactly that, blocked
inside `SELECT pg_advisory_lock(...)` in upgrade_database (index/db.py) until this migration
ends; PostgreSQL then reports a deadlock to one of them. A plain build holds a SHARE lock on
`images` (reads go on, writes wait) for as long as the build takes (docs/BENCHMARKS.md,
"Metadata filters on PostgreSQL: GIN index"). For a table too big for that pause, build it
beforehand without the lock, by hand, outside any migration:

    CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_images_metadata_gin
        ON images USING gin (metadata jsonb_path_ops);

and the upgrade keeps it. An invalid index of that name (such a build interrupted) is dropped
and built again here, since IF NOT EXISTS alone would keep an index the planner never uses.
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.engine import Connection


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

INDEX = 'ix_images_metadata_gin'
CREATE_SQL = f'CREATE INDEX IF NOT EXISTS {INDEX} ON images USING gin (metadata jsonb_path_ops)'


def create_index(connection: Connection) -> None:
    """The index, unless a valid one of that name is there already (re-runnable)."""
    valid = connection.execute(
        sa.text('SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:name)'), {'name': INDEX}
    ).scalar_one_or_none()
    if valid is False:
        connection.execute(sa.text(f'DROP INDEX {INDEX}'))
    connection.execute(sa.text(CREATE_SQL))


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    create_index(op.get_bind())


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute(f'DROP INDEX IF EXISTS {INDEX}')
