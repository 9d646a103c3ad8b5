"""tagging and screening state on images

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("tagging_state", sa.String(length=8), nullable=False, server_default="pending"))
        batch.add_column(sa.Column("tagging_due", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("tagging_attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("tagging_error", sa.Text(), nullable=True))
        batch.add_column(sa.Column("tagging_request", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("tagger", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("auto_tags", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("caption_edited", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("screening_verdict", sa.String(length=8), nullable=True))
        batch.add_column(sa.Column("screening_findings", sa.JSON(), nullable=True))
        batch.create_index("ix_images_tagging_due", ["tagging_state", "tagging_due"], unique=False)
    with op.batch_alter_table("snapshots") as batch:
        batch.add_column(sa.Column("blocked_image_count", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("snapshots") as batch:
        batch.drop_column("blocked_image_count")
    with op.batch_alter_table("images") as batch:
        batch.drop_index("ix_images_tagging_due")
        for column in ("screening_findings", "screening_verdict", "caption_edited", "auto_tags", "tagger",
                       "tagging_request", "tagging_error", "tagging_attempts", "tagging_due", "tagging_state"):
            batch.drop_column(column)
