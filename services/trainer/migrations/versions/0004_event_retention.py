"""event retention: how far each job's event log was pruned; the device a job needs; lease
ids unique

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 18:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('training_jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('events_pruned_through', sa.BigInteger(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('device', sa.String(length=8), server_default='', nullable=False))
        batch_op.create_unique_constraint('uq_training_jobs_lease_id', ['lease_id'])
    with op.batch_alter_table('generations', schema=None) as batch_op:
        batch_op.create_unique_constraint('uq_generations_lease_id', ['lease_id'])


def downgrade() -> None:
    with op.batch_alter_table('generations', schema=None) as batch_op:
        batch_op.drop_constraint('uq_generations_lease_id', type_='unique')
    with op.batch_alter_table('training_jobs', schema=None) as batch_op:
        batch_op.drop_constraint('uq_training_jobs_lease_id', type_='unique')
        batch_op.drop_column('device')
        batch_op.drop_column('events_pruned_through')
