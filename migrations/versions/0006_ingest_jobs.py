"""Server-side ingest jobs that outlive the process, and objects' ETags on their sources.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

`ingest_jobs` holds each POST /ingest job (and each batch of a watched folder's changes)
with its state, counts and failures, so a restarted server resumes what was running or
queued. `sources.etag` lets a re-run skip an unchanged object (same ETag and size) the way
a file is skipped by its size and mtime. Both are additions: no existing row changes.
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('sources', sa.Column('etag', sa.String(200), nullable=True))
    op.create_table(
        'ingest_jobs',
        sa.Column('id', sa.String(32), primary_key=True),
        sa.Column('collection', sa.String(200), nullable=False),
        sa.Column('kind', sa.String(16), nullable=False),
        sa.Column('source', sa.Text(), nullable=False),
        sa.Column('options', sa.JSON(), nullable=False),
        sa.Column('status', sa.String(16), nullable=False),
        sa.Column('summary', sa.JSON(), nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('attempts', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('cancel_requested', sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('started_at', sa.DateTime(), nullable=True),
        sa.Column('finished_at', sa.DateTime(), nullable=True),
        sa.Column('updated_at', sa.DateTime(), nullable=False),
    )
    op.create_index('ix_ingest_jobs_status', 'ingest_jobs', ['status'])


def downgrade() -> None:
    op.drop_index('ix_ingest_jobs_status', table_name='ingest_jobs')
    op.drop_table('ingest_jobs')
    with op.batch_alter_table('sources') as batch:
        batch.drop_column('etag')
