"""SQL records through SQLAlchemy Core: SQLite by default, PostgreSQL when shared.

SQLite write transactions start with BEGIN IMMEDIATE so that two writers
never deadlock upgrading a read lock (they queue on busy_timeout instead);
that is also what makes count-then-insert checks safe there. On PostgreSQL
the same checks lock the parent row (SELECT … FOR UPDATE).
"""

from __future__ import annotations

import datetime as dt
import pathlib
import sqlite3

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.pool import ConnectionPoolEntry

from services.common import call_context

READ_ONLY_OPTION = "kiln_read_only"
# Execution options for a transaction that only reads (see create_engine).
READ_ONLY = {READ_ONLY_OPTION: True}


def create_engine(url: str, *, timeout: float = 15.0, connect_timeout: float = 5.0, pool_size: int = 10) -> Engine:
    """An engine whose every transaction is held to what is left of the caller's deadline, at most
    `timeout` seconds (call_context), and whose connections give up after `connect_timeout`."""
    if url.startswith("sqlite"):
        database = sa.engine.make_url(url).database
        if database and database != ":memory:":
            pathlib.Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": timeout})

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: sqlite3.Connection, _record: ConnectionPoolEntry) -> None:
            # Let SQLAlchemy, not the driver, decide when transactions begin.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={_milliseconds(timeout)}")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn: sa.Connection) -> None:
            # A writer queues for the lock at most as long as its caller still waits (set only when
            # that changes: most calls have no deadline, and each PRAGMA is a statement).
            busy = _milliseconds(_quarter_seconds(call_context.remaining(timeout)))
            info = conn.connection.info
            if info.get("busy_timeout") != busy:
                conn.exec_driver_sql(f"PRAGMA busy_timeout={busy}")
                info["busy_timeout"] = busy
            # Readers don't queue behind writers: WAL gives them a consistent snapshot.
            read_only = conn.get_execution_options().get(READ_ONLY_OPTION)
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    ceiling = _milliseconds(timeout)
    # The server enforces the ceiling on every statement, and drops a session that sits idle
    # inside a transaction (a client that died holding locks); a tighter caller deadline is set
    # per transaction below, which costs a round trip only when there is one.
    options = f"-c statement_timeout={ceiling} -c idle_in_transaction_session_timeout={2 * ceiling}"
    engine = sa.create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=pool_size,
                              pool_timeout=timeout,
                              connect_args={"connect_timeout": max(1, round(connect_timeout)), "options": options})

    @sa.event.listens_for(engine, "begin")
    def _on_pg_begin(conn):  # type: ignore[no-untyped-def]
        left = _milliseconds(call_context.remaining(timeout))
        # Every call has a deadline at most the ceiling away; only a tighter one is worth the trip.
        if left < ceiling - 1000:
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {left}")

    return engine


def _quarter_seconds(seconds: float) -> float:
    # Coarse enough that consecutive transactions mostly ask for the same value.
    return int(seconds * 4) / 4


def _milliseconds(seconds: float) -> int:
    # 0 means "no limit" to both databases: a spent deadline still gets the shortest real one.
    return max(1, round(seconds * 1000))


def run_migrations_online(target_metadata: sa.MetaData | None = None) -> None:
    """Body of every service's alembic env.py."""
    # alembic fills this module in only while it runs an env.py.
    from alembic import context

    connection = context.config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=context.config.attributes["version_table"],
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def utc(value: dt.datetime) -> dt.datetime:
    """A stored time, with its zone: SQLite hands them back naive, and Kiln stores only UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
