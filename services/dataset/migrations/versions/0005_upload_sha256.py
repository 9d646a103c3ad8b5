"""the sha256 of an image's upload beside that of its stored original

An image's sha256 is that of what is stored (the upload less bytes after its end and excess
metadata, or its normalised PNG); a client resuming a folder upload recognises its files by the
sha256 of the bytes it sent. Images recorded before kept their uploads' bytes' sha256 as theirs.

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("upload_sha256", sa.String(length=64), nullable=True))
    op.execute("UPDATE images SET upload_sha256 = sha256")


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_column("upload_sha256")
