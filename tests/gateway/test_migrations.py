"""The Alembic migrations build exactly the schema the code declares, on both databases."""

from __future__ import annotations

import uuid

from services.gateway.schema import metadata
from services.gateway.server import MIGRATIONS, VERSION_TABLE
from tests.common.migration_helpers import schema_differences


def _differences(url: str) -> list[object]:
    return schema_differences(url, MIGRATIONS, VERSION_TABLE, metadata)


def test_sqlite_schema_matches(tmp_path):
    assert _differences(f"sqlite:///{tmp_path / 'x.db'}") == []


def test_postgres_schema_matches(postgres):
    assert _differences(postgres.create_database(f"mig_{uuid.uuid4().hex[:8]}")) == []
