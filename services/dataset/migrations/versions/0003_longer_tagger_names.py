"""room for the longest tagger names

`images.tagger` holds `taggers/{id}`, and an id may be 63 characters long: 71 in all,
which PostgreSQL refused in a 64-character column (SQLite never checks lengths).

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Batch mode rebuilds the table on SQLite, which can't alter a column's type; on
    # PostgreSQL it is a plain ALTER, and widening a varchar rewrites nothing.
    with op.batch_alter_table("images") as batch:
        batch.alter_column("tagger", existing_type=sa.String(length=64), type_=sa.String(length=128),
                           existing_nullable=True)


def downgrade() -> None:
    # Names that only fit the wider column are cut, or PostgreSQL would refuse the narrowing.
    images = sa.table("images", sa.column("tagger", sa.String()))
    op.execute(images.update().where(sa.func.length(images.c.tagger) > 64)
               .values(tagger=sa.func.substr(images.c.tagger, 1, 64)))
    with op.batch_alter_table("images") as batch:
        batch.alter_column("tagger", existing_type=sa.String(length=128), type_=sa.String(length=64),
                           existing_nullable=True)
