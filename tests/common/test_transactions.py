"""Transactions that outlive their caller's wait still decide the fate of their objects, and a
call given up on before a thread was free never runs at all."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from services.common.database import create_engine
from services.common.idempotency import IdempotencyKeys, idempotency_table
from services.common.objectstore import ObjectStore
from services.common.outages import DependencyUnavailable
from services.common.transactions import Transactions

metadata = sa.MetaData()
rows = sa.Table("rows", metadata, sa.Column("id", sa.String(32), primary_key=True))
request_ids = idempotency_table(metadata, "request_ids")


@pytest.fixture
def transactions(tmp_path, store: ObjectStore):
    engine = create_engine(f"sqlite:///{tmp_path / 'tx.db'}")
    metadata.create_all(engine)
    tx = Transactions(engine, IdempotencyKeys(request_ids), store, pool_size=1, database_timeout=0.5)
    yield tx
    tx.close()
    engine.dispose()


def ids(tx: Transactions) -> list[str]:
    with tx.engine.connect() as conn:
        return list(conn.execute(sa.select(rows.c.id)).scalars())


def held_insert(row_id: str, gate: threading.Event, started: threading.Event | None = None):
    def work(conn: Connection) -> None:
        if started is not None:
            started.set()
        assert gate.wait(30), "the test never let the transaction finish"
        conn.execute(rows.insert().values(id=row_id))

    return work


def test_a_transaction_that_commits_after_its_caller_gave_up_keeps_its_objects(transactions, store):
    key = f"datasets/tx{uuid.uuid4().hex[:12]}/images/a/original"
    store.put_bytes(key, b"the bytes the record points at")
    gate = threading.Event()

    async def scenario() -> None:
        with pytest.raises(DependencyUnavailable):
            await transactions.commit(held_insert("a", gate), written=[key])
        gate.set()  # the database answers only now, long after the caller heard UNAVAILABLE
        await transactions.settled()

    asyncio.run(scenario())
    assert ids(transactions) == ["a"]
    assert store.exists(key), "the record committed, so its bytes must stay"


def test_a_call_given_up_on_while_it_waited_for_a_thread_never_runs(transactions, store):
    key = f"datasets/tx{uuid.uuid4().hex[:12]}/images/b/original"
    store.put_bytes(key, b"bytes of a write that never happened")
    gate, first_started = threading.Event(), threading.Event()

    async def scenario() -> None:
        first = asyncio.ensure_future(transactions.commit(held_insert("first", gate, first_started)))
        assert await asyncio.to_thread(first_started.wait, 30)  # it holds the only thread now
        with pytest.raises(DependencyUnavailable):
            await transactions.commit(held_insert("second", gate), written=[key])
        with pytest.raises(DependencyUnavailable):
            await first
        gate.set()
        await transactions.settled()

    asyncio.run(scenario())
    assert ids(transactions) == ["first"]
    assert not store.exists(key), "the write that never ran leaves no bytes behind"
