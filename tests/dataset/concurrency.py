"""Tools for tests that race requests against each other or against a held lock, deterministically:
a lock held from a connection of the test's own, and ways to know who is waiting behind it."""

from __future__ import annotations

import contextlib
import pathlib
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from services.common.call_context import acting_for
from services.common.database import READ_ONLY_OPTION
from services.common.internal_auth import DEFAULT_TENANT
from services.common.objectstore import ObjectStore
from services.dataset.server import DatasetComponents, build_dataset
from services.dataset.servicer import DatasetServicer
from services.dataset.settings import DatasetSettings


def outcome(call: Callable[[], Any]) -> str:
    """What a blocking gRPC call came to: the resource name it returned (or "ok"), else its status code."""
    try:
        result = call()
    except grpc.RpcError as err:
        return err.code().name
    return getattr(result, "name", "") or "ok"


def wait_for_lock_waiters(url: str, count: int, timeout: float = 30) -> None:
    """Until `count` sessions of the database wait on a lock. Only PostgreSQL knows who waits, so
    this polls its activity view (with a deadline) rather than waiting on a signal."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity "
                               "WHERE datname = current_database() AND wait_event_type = 'Lock'").fetchone()
            waiting = row[0] if row else 0
            if waiting >= count:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{waiting} of {count} sessions are waiting on a lock after {timeout}s")
            time.sleep(0.02)


@contextlib.contextmanager
def pg_dataset_locked(url: str, dataset_id: str) -> Iterator[Callable[[], None]]:
    """Hold a dataset row as a writer does (SELECT … FOR UPDATE); yields the release."""
    conn = psycopg.connect(url)
    try:
        conn.execute("SELECT 1 FROM datasets WHERE id = %s FOR UPDATE", (dataset_id,))
        yield conn.commit
    finally:
        conn.close()


@contextlib.contextmanager
def sqlite_writer_locked(database: pathlib.Path) -> Iterator[Callable[[], None]]:
    """Hold SQLite's write lock as a writer does (BEGIN IMMEDIATE); yields the release."""
    conn = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield lambda: conn.execute("COMMIT")
    finally:
        conn.close()


class FakeContext:
    """Enough of a grpc.aio.ServicerContext to call handlers directly, so a test can cancel one at
    a precise point as grpc.aio does when the client goes away or its deadline passes."""

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def time_remaining(self) -> None:
        return None

    def cancelled(self) -> bool:
        return False

    async def abort_with_status(self, status: grpc.Status) -> None:
        raise Aborted(status)


class Aborted(Exception):
    def __init__(self, status: grpc.Status) -> None:
        super().__init__(status.details)
        self.code = status.code


def write_began(engine: Engine) -> threading.Event:
    """Set when a write transaction starts, before it takes any lock (and so before it can wait on one)."""
    began = threading.Event()
    if engine.dialect.name == "sqlite":
        # SQLite writers take the lock, and queue for it, in BEGIN IMMEDIATE itself.
        def before_execute(conn: sa.Connection, cursor: Any, statement: str, *_: Any) -> None:
            if statement == "BEGIN IMMEDIATE":
                began.set()

        sa.event.listen(engine, "before_cursor_execute", before_execute)
        return began

    def on_begin(conn: sa.Connection) -> None:
        if not conn.get_execution_options().get(READ_ONLY_OPTION):
            began.set()

    sa.event.listen(engine, "begin", on_begin)
    return began


@dataclass
class BareService:
    components: DatasetComponents

    @property
    def servicer(self) -> DatasetServicer:
        return self.components.servicer

    @property
    def engine(self) -> Engine:
        return self.components.transactions.engine

    async def settle(self) -> None:
        """Until every transaction the servicer started has ended, and whatever waited on one
        (object clean-ups) has run."""
        await self.components.transactions.settled()


@contextlib.asynccontextmanager
async def bare_service(settings: DatasetSettings, store: ObjectStore) -> AsyncIterator[BareService]:
    """The servicer without a server or background work: only the test's calls touch the database.
    Its handlers are called directly, as the default tenant."""
    components = await build_dataset(settings.model_copy(update={"crop_use_detector": False}), store)
    try:
        with acting_for(DEFAULT_TENANT):
            yield BareService(components)
    finally:
        await components.close()
