"""The gateway's tables (SQLAlchemy Core). Migrations live in migrations/."""

from __future__ import annotations

import sqlalchemy as sa

from services.common.idempotency import idempotency_table

metadata = sa.MetaData()
Timestamp = sa.DateTime(timezone=True)

# API keys: `kiln_<id>_<secret>`. Only the secret's SHA-256 is kept (a key is 190 random bits:
# no slow hash is needed against guessing, and none could make a leaked table safe to keep).
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("secret_sha256", sa.String(64), nullable=False),
    sa.Column("create_time", Timestamp, nullable=False),
    sa.Column("revoke_time", Timestamp),
    sa.Column("last_use_time", Timestamp),
)

request_ids = idempotency_table(metadata, "gateway_request_ids")
