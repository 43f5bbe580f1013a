"""PostgreSQL only: image metadata as jsonb, so metadata filters are containment tests.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28

SQLite is left as it is (its JSON is text either way); a PostgreSQL database created
by 0001 is converted in place.
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.alter_column(
        'images', 'metadata', type_=postgresql.JSONB(), existing_type=sa.JSON(),
        existing_nullable=False, postgresql_using='metadata::jsonb',
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.alter_column(
        'images', 'metadata', type_=sa.JSON(), existing_type=postgresql.JSONB(),
        existing_nullable=False, postgresql_using='metadata::json',
    )
