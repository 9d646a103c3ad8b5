"""test generations

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 15:20:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('generations',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('request_key', sa.String(length=128), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('assignment', sa.LargeBinary(), nullable=False),
    sa.Column('family', sa.String(length=8), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('due', sa.DateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('error_status', sa.LargeBinary(), nullable=True),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('lease_id', sa.String(length=32), nullable=True),
    sa.Column('worker', sa.String(length=128), server_default='', nullable=False),
    sa.Column('claims', sa.Integer(), server_default='0', nullable=False),
    sa.Column('sheet', sa.LargeBinary(), nullable=True),
    sa.Column('images', sa.Integer(), server_default='0', nullable=False),
    sa.Column('create_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('update_time', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('tenant', 'request_key', name='uq_generations_tenant_request_key')
    )
    with op.batch_alter_table('generations', schema=None) as batch_op:
        batch_op.create_index('ix_generations_queue', ['state', 'due'], unique=False)
        batch_op.create_index(batch_op.f('ix_generations_job_id'), ['job_id'], unique=False)
    op.create_table('generated_images',
    sa.Column('generation_id', sa.String(length=32), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('body', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('generation_id', 'seq')
    )


def downgrade() -> None:
    op.drop_table('generated_images')
    with op.batch_alter_table('generations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_generations_job_id'))
        batch_op.drop_index('ix_generations_queue')
    op.drop_table('generations')
