"""Each service's Alembic migrations build exactly the schema its code declares, on SQLite and on
PostgreSQL, and a second run changes nothing."""

from __future__ import annotations

import pathlib
import uuid

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from services.common.database import create_engine, migrate
from services.dataset import schema as dataset_schema
from services.dataset import server as dataset_server
from services.gateway import schema as gateway_schema
from services.gateway import server as gateway_server
from services.trainer import schema as trainer_schema
from services.trainer import server as trainer_server

SERVICES = {
    "dataset": (dataset_server.MIGRATIONS, dataset_server.VERSION_TABLE, dataset_schema.metadata),
    "trainer": (trainer_server.MIGRATIONS, trainer_server.VERSION_TABLE, trainer_schema.metadata),
    "gateway": (gateway_server.MIGRATIONS, gateway_server.VERSION_TABLE, gateway_schema.metadata),
}


def schema_differences(url: str, migrations: pathlib.Path, version_table: str, metadata: sa.MetaData) -> list[object]:
    engine = create_engine(url)
    try:
        migrate(engine, migrations, version_table)
        migrate(engine, migrations, version_table)  # a second run changes nothing
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": version_table})
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_sqlite_schema_matches(service, tmp_path):
    assert schema_differences(f"sqlite:///{tmp_path / 'x.db'}", *SERVICES[service]) == []


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_postgres_schema_matches(service, postgres):
    assert schema_differences(postgres.create_database(f"mig_{uuid.uuid4().hex[:8]}"), *SERVICES[service]) == []
