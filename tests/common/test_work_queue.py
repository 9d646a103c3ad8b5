"""The leased work queue, on SQLite and PostgreSQL, with a table of its own: claims with a lease,
expired leases claimed again, retries with backoff, poison rows failed alone, SKIP LOCKED between
replicas, and the figures its metrics report."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from services.common.database import create_engine
from services.common.work_queue import LeasedQueue, QueueLoop, QueueTable, RetryPolicy

metadata = sa.MetaData()
items = sa.Table(
    "queue_items", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("state", sa.String(8), nullable=False),
    sa.Column("due", sa.DateTime(timezone=True)),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error", sa.Text),
    sa.Column("claimed_at", sa.DateTime(timezone=True)),
    sa.Column("result", sa.String(8)),  # short on purpose: a longer result is refused on PostgreSQL
)
WHERE = QueueTable(items, items.c.id, items.c.state, items.c.due, items.c.attempts, items.c.error,
                   items.c.claimed_at)
START = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
LEASE = dt.timedelta(minutes=5)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, delta: dt.timedelta) -> None:
        self.now += delta


@dataclass
class Queue:
    engine: Engine
    clock: Clock
    queue: LeasedQueue

    def add(self, *ids: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(items.insert(), [{"id": i, "state": "pending", "due": self.clock.now} for i in ids])

    def claim(self, limit: int = 10) -> list[str]:
        with self.engine.begin() as conn:
            return [row.id for row in self.queue.claim(conn, limit)]

    def row(self, item: str) -> sa.Row:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(items).where(items.c.id == item)).one()

    def fail(self, item: str, reason: str) -> None:
        """As the worker holding the item's current claim."""
        with self.engine.begin() as conn:
            self.queue.fail(conn, [conn.execute(sa.select(items).where(items.c.id == item)).one()], reason)


@pytest.fixture(params=["sqlite", "postgresql"])
def q(request, tmp_path) -> Iterator[Queue]:
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres").create_database(f"queue_{uuid.uuid4().hex[:8]}")
    else:
        url = f"sqlite:///{tmp_path / 'queue.db'}"
    engine = create_engine(url)
    metadata.create_all(engine)
    clock = Clock()
    try:
        yield Queue(engine, clock, LeasedQueue("test", WHERE, LEASE, RetryPolicy(3, dt.timedelta(seconds=10)),
                                               clock=clock))
    finally:
        engine.dispose()


def aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)  # SQLite hands back naive UTC


def test_a_claim_leases_items_until_the_lease_runs_out(q):
    q.add("a", "b", "c")
    assert q.claim(2) == ["a", "b"]
    assert q.claim() == ["c"]
    assert q.claim() == []
    assert aware(q.row("a").due) == START + LEASE and aware(q.row("a").claimed_at) == START
    # The worker holding the lease died: once it runs out, the items are claimed again.
    q.clock.advance(LEASE)
    assert q.claim() == ["a", "b", "c"]


def test_failures_back_off_then_give_up_with_the_last_reason(q):
    q.add("a")
    q.claim()
    q.fail("a", "tagger down")
    assert aware(q.row("a").due) == START + dt.timedelta(seconds=10)
    assert q.row("a").claimed_at is None
    assert q.claim() == []
    q.clock.advance(dt.timedelta(seconds=10))
    assert q.claim() == ["a"]
    q.fail("a", "still down")
    assert aware(q.row("a").due) == START + dt.timedelta(seconds=30)  # 10 s, then twice that
    q.clock.advance(dt.timedelta(seconds=20))
    assert q.claim() == ["a"]
    q.fail("a", "gone for good")
    row = q.row("a")
    assert (row.state, row.attempts, row.error) == ("failed", 3, "gone for good")
    q.clock.advance(dt.timedelta(days=1))
    assert q.claim() == []


def test_a_result_the_database_refuses_fails_that_item_alone(q):
    q.add("a", "b", "c")

    def record(conn: Connection, row: sa.Row) -> str:
        if row.id == "c":
            return "the tagger answered nonsense"
        value = "x" * 100 if row.id == "b" else "done"
        if row.id == "b" and conn.dialect.name == "sqlite":
            raise sa.exc.IntegrityError("insert", {}, Exception("refused"))  # SQLite checks no lengths
        conn.execute(items.update().where(items.c.id == row.id)
                     .values({items.c.state: "done", items.c.result: value, **q.queue.finished()}))
        return ""

    with q.engine.begin() as conn:
        q.queue.record_each(conn, q.queue.claim(conn, 10), record)
    assert (q.row("a").state, q.row("a").result, q.row("a").claimed_at) == ("done", "done", None)
    for failed, why in (("b", "could not record the result"), ("c", "the tagger answered nonsense")):
        row = q.row(failed)
        assert (row.state, row.attempts) == ("pending", 1)
        assert row.error.startswith(why)


def test_a_worker_whose_lease_ran_out_can_no_longer_touch_the_item(q):
    q.add("a")
    with q.engine.begin() as conn:
        stale = q.queue.claim(conn, 1)
    q.clock.advance(LEASE)  # the first worker paused past its lease; a second one takes the item
    with q.engine.begin() as conn:
        fresh = q.queue.claim(conn, 1)
    with q.engine.begin() as conn:
        q.queue.fail(conn, stale, "late news from a paused worker")
        current = conn.execute(sa.select(items).where(items.c.id == "a")).one()
        assert not q.queue.held(current, stale[0]) and q.queue.held(current, fresh[0])
    row = q.row("a")
    assert (row.attempts, row.error, aware(row.due)) == (0, None, START + 2 * LEASE)
    with q.engine.begin() as conn:
        q.queue.fail(conn, fresh, "the holder's own failure counts")
    assert (q.row("a").attempts, q.row("a").error) == (1, "the holder's own failure counts")


def test_requeue_puts_items_back_as_new(q):
    q.add("a")
    q.claim()
    for _ in range(3):
        q.clock.advance(dt.timedelta(hours=1))
        q.claim()
        q.fail("a", "no")
    assert q.row("a").state == "failed"
    with q.engine.begin() as conn:
        assert q.queue.requeue(conn, items.c.id == "a") == 1
    assert (q.row("a").state, q.row("a").attempts) == ("pending", 0)
    assert q.claim() == ["a"]


def test_stats_report_depth_and_the_oldest_lease(q):
    q.add("a", "b", "c")
    with q.engine.connect() as conn:
        assert q.queue.stats(conn).depth == 3 and q.queue.stats(conn).oldest_lease_age == 0
    q.claim(1)
    q.clock.advance(dt.timedelta(seconds=42))
    q.claim(1)
    with q.engine.connect() as conn:
        stats = q.queue.stats(conn)
    assert (stats.depth, stats.oldest_lease_age) == (3, 42.0)


def test_replicas_on_postgresql_claim_disjoint_items_without_waiting(postgres):
    url = postgres.create_database(f"queue_{uuid.uuid4().hex[:8]}")
    engine = create_engine(url)
    metadata.create_all(engine)
    clock = Clock()
    queue = LeasedQueue("test", WHERE, LEASE, RetryPolicy(), clock=clock)
    try:
        Queue(engine, clock, queue).add("a", "b", "c", "d")
        with engine.connect() as first, engine.connect() as second:
            first.begin()
            taken = [r.id for r in queue.claim(first, 2)]  # locked until `first` commits
            second.begin()
            second.exec_driver_sql("SET LOCAL lock_timeout = '2s'")  # waiting would fail loudly, not hang
            others = [r.id for r in queue.claim(second, 10)]
            second.commit()
            first.commit()
        assert taken == ["a", "b"] and others == ["c", "d"]
    finally:
        engine.dispose()


def test_the_loop_runs_at_once_when_woken_and_reports_idle():
    async def scenario() -> list[str]:
        work = ["one", "two"]
        done: list[str] = []

        async def round_() -> bool:
            if not work:
                return False
            done.append(work.pop(0))
            return True

        loop = QueueLoop(round_, idle_poll=3600, name="test")
        runner = asyncio.create_task(loop.run_forever())
        await loop.until_idle()
        work.append("three")
        await loop.until_idle()  # woken: no waiting for the hour-long poll
        runner.cancel()
        return done

    assert asyncio.run(scenario()) == ["one", "two", "three"]
