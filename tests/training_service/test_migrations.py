"""The trainer's migrations build exactly the schema its code declares, on both databases."""

from __future__ import annotations

import uuid

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from services.common.database import create_engine, migrate
from services.trainer.schema import metadata
from services.trainer.server import MIGRATIONS, VERSION_TABLE


def _differences(url: str) -> list[object]:
    engine = create_engine(url)
    try:
        migrate(engine, MIGRATIONS, VERSION_TABLE)
        migrate(engine, MIGRATIONS, VERSION_TABLE)  # a second run changes nothing
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            return compare_metadata(context, metadata)
    finally:
        engine.dispose()


def test_sqlite_schema_matches(tmp_path):
    assert _differences(f"sqlite:///{tmp_path / 'x.db'}") == []


def test_postgres_schema_matches(postgres):
    assert _differences(postgres.create_database(f"mig_{uuid.uuid4().hex[:8]}")) == []
