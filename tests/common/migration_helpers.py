"""Whether a service's Alembic migrations build exactly the schema its code declares."""

from __future__ import annotations

import pathlib

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from services.common.database import create_engine, migrate


def schema_differences(url: str, migrations: pathlib.Path, version_table: str, metadata: sa.MetaData) -> list[object]:
    """What differs between the migrated database at `url` and `metadata` (empty: nothing)."""
    engine = create_engine(url)
    try:
        migrate(engine, migrations, version_table)
        migrate(engine, migrations, version_table)  # a second run changes nothing
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": version_table})
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()
