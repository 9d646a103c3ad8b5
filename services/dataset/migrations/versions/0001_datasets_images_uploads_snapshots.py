"""datasets, images, uploads, snapshots

Revision ID: 0001
Revises:
Create Date: 2026-11-25 12:21:46.415714
"""
import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('datasets',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('display_name', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('family', sa.String(length=8), nullable=False),
    sa.Column('default_repeat', sa.Integer(), nullable=False),
    sa.Column('create_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('update_time', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_datasets_tenant'), ['tenant'], unique=False)

    op.create_table('dataset_request_ids',
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('method', sa.String(length=64), nullable=False),
    sa.Column('request_id', sa.String(length=128), nullable=False),
    sa.Column('body_sha256', sa.String(length=64), nullable=False),
    sa.Column('response', sa.LargeBinary(), nullable=False),
    sa.Column('create_time', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('tenant', 'method', 'request_id')
    )
    op.create_table('images',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('dataset_id', sa.String(length=32), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('filename', sa.String(length=255), nullable=False),
    sa.Column('content_type', sa.String(length=32), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('original_key', sa.String(length=512), nullable=False),
    sa.Column('thumbnail_key', sa.String(length=512), nullable=False),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.Column('repeat', sa.Integer(), nullable=False),
    sa.Column('warnings', sa.JSON(), nullable=False),
    sa.Column('crop_left', sa.Integer(), nullable=True),
    sa.Column('crop_top', sa.Integer(), nullable=True),
    sa.Column('crop_width', sa.Integer(), nullable=True),
    sa.Column('crop_height', sa.Integer(), nullable=True),
    sa.Column('crop_target_width', sa.Integer(), nullable=True),
    sa.Column('crop_target_height', sa.Integer(), nullable=True),
    sa.Column('crop_mode', sa.String(length=8), nullable=True),
    sa.Column('crop_upscaled', sa.Boolean(), nullable=True),
    sa.Column('crop_key', sa.String(length=512), nullable=True),
    sa.Column('create_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('update_time', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('dataset_id', 'sha256', name='uq_images_dataset_sha256')
    )
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.create_index('ix_images_dataset_role_created', ['dataset_id', 'role', 'create_time', 'id'],
                              unique=False)

    op.create_table('snapshots',
    sa.Column('dataset_id', sa.String(length=32), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('manifest_key', sa.String(length=512), nullable=False),
    sa.Column('training_image_count', sa.Integer(), nullable=False),
    sa.Column('regularization_image_count', sa.Integer(), nullable=False),
    sa.Column('total_repeated_images', sa.BigInteger(), nullable=False),
    sa.Column('create_time', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('dataset_id', 'sha256')
    )
    op.create_table('uploads',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('dataset_id', sa.String(length=32), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('filename', sa.String(length=255), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.Column('repeat', sa.Integer(), nullable=False),
    sa.Column('object_key', sa.String(length=512), nullable=False),
    sa.Column('image_id', sa.String(length=32), nullable=True),
    sa.Column('expire_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('create_time', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('snapshot_objects',
    sa.Column('dataset_id', sa.String(length=32), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('object_key', sa.String(length=512), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id', 'sha256'], ['snapshots.dataset_id', 'snapshots.sha256'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('dataset_id', 'sha256', 'object_key')
    )
    with op.batch_alter_table('snapshot_objects', schema=None) as batch_op:
        batch_op.create_index('ix_snapshot_objects_key', ['object_key'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('snapshot_objects', schema=None) as batch_op:
        batch_op.drop_index('ix_snapshot_objects_key')

    op.drop_table('snapshot_objects')
    op.drop_table('uploads')
    op.drop_table('snapshots')
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.drop_index('ix_images_dataset_role_created')

    op.drop_table('images')
    op.drop_table('dataset_request_ids')
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_datasets_tenant'))

    op.drop_table('datasets')
