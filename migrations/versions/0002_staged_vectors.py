"""Staged vectors: a collection's images re-embedded with another model, switched in one transaction.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('staged_vectors',
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('collection_id', sa.Integer(), nullable=False),
    sa.Column('vector', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['collection_id'], ['collections.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('image_id')
    )
    with op.batch_alter_table('staged_vectors', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_staged_vectors_collection_id'), ['collection_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('staged_vectors', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_staged_vectors_collection_id'))
    op.drop_table('staged_vectors')
