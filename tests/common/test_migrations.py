"""Each service's Alembic migrations build exactly the schema its code declares, on SQLite and on
PostgreSQL, and a second run changes nothing; replicas migrating one PostgreSQL at once all
succeed; the migration step (`python -m services.<service> migrate`) says what it did, and a
service whose start-up migration is off refuses a schema its code was not written for."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import os
import pathlib
import subprocess
import sys
import uuid

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from services.common.database import create_engine
from services.common.migrations import SchemaMigrations, SchemaNotCurrent
from services.dataset import schema as dataset_schema
from services.dataset import server as dataset_server
from services.gateway import schema as gateway_schema
from services.gateway import server as gateway_server
from services.trainer import schema as trainer_schema
from services.trainer import server as trainer_server

SCHEMA: dict[str, SchemaMigrations] = {
    "dataset": dataset_server.SCHEMA, "trainer": trainer_server.SCHEMA, "gateway": gateway_server.SCHEMA}
METADATA = {"dataset": dataset_schema.metadata, "trainer": trainer_schema.metadata, "gateway": gateway_schema.metadata}
ROOT = pathlib.Path(__file__).resolve().parents[2]


def differences(conn: sa.Connection, service: str) -> list[object]:
    """Between the service's declared tables and its database's (other services' tables, in a
    database they share, are none of its business)."""
    tables = METADATA[service].tables

    def own(name: str | None, kind: str, _parent: object) -> bool:
        return kind != "table" or name in tables

    context = MigrationContext.configure(conn, opts={"version_table": SCHEMA[service].version_table,
                                                     "include_name": own})
    return list(compare_metadata(context, METADATA[service]))


def schema_differences(url: str, service: str) -> list[object]:
    engine = create_engine(url)
    try:
        SCHEMA[service].upgrade(engine)
        SCHEMA[service].upgrade(engine)  # a second run changes nothing
        with engine.connect() as conn:
            return differences(conn, service)
    finally:
        engine.dispose()


@pytest.mark.parametrize("service", sorted(SCHEMA))
def test_sqlite_schema_matches(service, tmp_path):
    assert schema_differences(f"sqlite:///{tmp_path / 'x.db'}", service) == []


@pytest.mark.parametrize("service", sorted(SCHEMA))
def test_postgres_schema_matches(service, postgres):
    assert schema_differences(postgres.create_database(f"mig_{uuid.uuid4().hex[:8]}"), service) == []


# Replicas starting at once on one PostgreSQL: each process builds its engine, then all start migrating
# every service's schema at the same moment (a barrier), as replicas of a deployment rolled out together do.
REPLICAS = 4


def _migrate_at_once(url: str, barrier: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue) -> None:
    engine = create_engine(url)
    try:
        barrier.wait(timeout=60)
        done = {name: SCHEMA[name].upgrade(engine) for name in sorted(SCHEMA)}
        results.put(("ok", {name: (upgrade.before, upgrade.after) for name, upgrade in done.items()}))
    except Exception as error:
        results.put(("failed", repr(error)))
    finally:
        engine.dispose()


def test_replicas_migrating_one_postgres_at_once_all_succeed(postgres):
    url = postgres.create_database(f"race_{uuid.uuid4().hex[:8]}")
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(REPLICAS), context.Queue()
    processes = [context.Process(target=_migrate_at_once, args=(url, barrier, results)) for _ in range(REPLICAS)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    assert [kind for kind, _ in outcomes] == ["ok"] * REPLICAS, outcomes
    engine = create_engine(url)
    try:
        for name, schema in SCHEMA.items():
            heads = schema.head()
            # One replica migrated each schema from nothing; the others found it at head.
            before = sorted((done[name] for _, done in outcomes), key=str)
            assert before == [(heads, heads)] * (REPLICAS - 1) + [(None, heads)]
            assert schema.require_current(engine) == heads
            with engine.connect() as conn:
                assert differences(conn, name) == []
    finally:
        engine.dispose()


def test_without_start_up_migration_a_service_refuses_a_schema_behind_its_code(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'trainer.db'}")
    schema = SCHEMA["trainer"]
    try:
        with pytest.raises(SchemaNotCurrent, match=r"at \(empty\) but this release needs .*python -m services.trainer "
                                                   r"migrate"):
            schema.prepare(engine, migrate_on_start=False)
        schema.upgrade(engine, "0001")  # the database of an older release
        with pytest.raises(SchemaNotCurrent, match="at 0001 but this release needs"):
            schema.prepare(engine, migrate_on_start=False)
        schema.prepare(engine, migrate_on_start=True)  # what the step (or start-up) does
        schema.prepare(engine, migrate_on_start=False)
        assert schema.require_current(engine) == schema.head()
        with engine.begin() as conn:  # a later release migrated it; this one can't serve it
            conn.execute(sa.text(f"UPDATE {schema.version_table} SET version_num = '9999'"))
        with pytest.raises(SchemaNotCurrent, match=r"newer than this release .*downgrades are not supported"):
            schema.prepare(engine, migrate_on_start=False)
        with pytest.raises(SchemaNotCurrent, match=r"a revision this release does not know .*downgrades are not"):
            schema.prepare(engine, migrate_on_start=True)
    finally:
        engine.dispose()


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("KILN_")}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**environment, **(env or {})})


def test_migrate_step_says_what_it_did_and_exits_0(postgres):
    url = postgres.create_database(f"step_{uuid.uuid4().hex[:8]}")
    head = SCHEMA["trainer"].head()
    first = _run("services.trainer", "migrate", env={"KILN_TRAINER_DATABASE_URL": url})
    assert (first.returncode, first.stderr) == (0, "")
    assert first.stdout.startswith(f"trainer: migrated from (empty) to {head} (postgresql://postgres@")
    again = _run("services.trainer", "migrate", "--database-url", url)
    assert again.returncode == 0
    assert again.stdout.startswith(f"trainer: already at {head} ")


@pytest.mark.parametrize(("service", "url", "says"), [
    ("dataset", "not a url", "dataset: not a database URL Kiln can use: not a url "),
    ("gateway", "postgresql://kiln:secret@127.0.0.1:1/kiln", "gateway: could not migrate postgresql://kiln:***@"),
    ("trainer", "postgres://kiln:secret@db/kiln", "trainer: not a database URL Kiln can use: postgres://kiln:***@db/kiln"),
    ("dataset", "postgresql://kiln:secret@db:port/kiln",
     "dataset: not a database URL Kiln can use: postgresql://kiln:***@db:port/kiln"),
])
def test_migrate_step_refuses_a_bad_url_with_exit_2(service, url, says):
    result = _run(f"services.{service}", "migrate", "--database-url", url)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {says}")
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.stderr and "secret" not in result.stderr


def test_migrate_step_says_to_write_postgresql_for_postgres():
    result = _run("services.gateway", "migrate", "--database-url", "postgres://kiln:s3cretpw@db/kiln")
    assert result.returncode == 2
    assert result.stderr.rstrip().endswith("write postgresql:// instead of postgres://")
    assert "s3cretpw" not in result.stderr + result.stdout


def test_the_migrate_step_shows_no_password_when_it_succeeds(postgres):
    url = postgres.create_database(f"shown_{uuid.uuid4().hex[:8]}")
    with_password = sa.engine.make_url(url).set(password="hunter2-pw")
    result = _run("services.dataset", "migrate", "--database-url",
                  with_password.render_as_string(hide_password=False))
    # The test cluster trusts local connections, so any password is accepted: the run succeeds and prints the URL.
    assert result.returncode == 0, result.stderr
    assert ":***@" in result.stdout and "hunter2-pw" not in result.stdout + result.stderr


@pytest.mark.parametrize("where", ["under a file", "under a missing mount"])
def test_the_migrate_step_says_when_the_sqlite_folder_cant_be_made(tmp_path, where):
    (tmp_path / "a-file").write_text("")
    folder = tmp_path / "a-file" / "dir" if where == "under a file" else pathlib.Path("/proc/kiln-missing")
    result = _run("services.trainer", "migrate", "--database-url", f"sqlite:///{folder / 'x.db'}")
    assert result.returncode == 2
    assert result.stderr.startswith("error: trainer: can't create the folder of sqlite:///")
    assert "give a path in a folder that exists and is writable" in result.stderr
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(("command", "variable", "value"), [
    (("services.dataset", "migrate"), "KILN_DATABASE_TIMEOUT_SECONDS", "soon"),
    (("services.trainer", "migrate"), "KILN_DATABASE_CONNECT_TIMEOUT_SECONDS", "-"),
    (("services.gateway", "migrate"), "KILN_S3__BUCKET", "Not_A_Bucket"),
    (("services.gateway", "keys", "list"), "KILN_S3__BUCKET", "Not_A_Bucket"),
    (("services.trainer",), "KILN_DATABASE_POOL_SIZE", "many"),  # serving: stopped before it starts
])
def test_a_bad_setting_is_named_in_one_line_with_exit_2(tmp_path, command, variable, value):
    result = _run(*command, env={"KILN_DATA_DIR": str(tmp_path), variable: value})
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: {command[0].split('.')[1]}: bad setting {variable}: ")
    assert result.stderr.rstrip().endswith("correct the value, or unset the variable for its default")


def test_a_service_process_without_start_up_migration_exits_2_on_an_empty_database(tmp_path):
    result = _run("services.gateway", env={
        "KILN_MIGRATE_ON_START": "false", "KILN_DATA_DIR": str(tmp_path), "KILN_JSON_LOGS": "false",
        "KILN_INTERNAL_AUTH__TOKEN": "t", "KILN_DATASET_ADDRESS": "127.0.0.1:1", "KILN_TRAINER_ADDRESS": "127.0.0.1:1",
        "KILN_METRICS__ENABLED": "false"})
    assert result.returncode == 2
    assert "run `python -m services.gateway migrate` (the migration step) before starting the service" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_migrate_step_refuses_a_schema_newer_than_its_release(tmp_path):
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    engine = create_engine(url)
    try:
        SCHEMA["gateway"].upgrade(engine)
        with engine.begin() as conn:
            conn.execute(sa.text(f"UPDATE {SCHEMA['gateway'].version_table} SET version_num = '9999'"))
    finally:
        engine.dispose()
    result = _run("services.gateway", "migrate", "--database-url", url)
    assert result.returncode == 2
    assert result.stderr.startswith("error: gateway: ") and "downgrades are not supported" in result.stderr
    assert "9999" in result.stderr and "Traceback" not in result.stderr
