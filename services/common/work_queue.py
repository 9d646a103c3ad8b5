"""A leased work queue in SQL: the rows are the queue (the dataset service's tagging queue, the
trainer service's training jobs).

- **Claim with a lease.** A claim moves an item's `due` one lease ahead and stamps `claimed_at`;
  a worker that dies simply lets its lease run out and the item is claimed again. PostgreSQL
  replicas claim with `FOR UPDATE SKIP LOCKED`, each taking rows the others haven't locked;
  SQLite serialises writers at `BEGIN IMMEDIATE`.
- **Retries with backoff.** A failed attempt moves `due` by an exponential backoff until the
  attempts run out; then the item is failed, with the last reason kept.
- **Poison rows.** Results are recorded one item at a time inside a savepoint: an item whose
  result the database refuses becomes a failed attempt of its own, not its batch-mates'.
- **Lock order.** Items are recorded in id order, so two workers recording overlapping batches
  queue behind each other instead of deadlocking.
- **Fencing.** Every write of a worker is conditioned on its own claim stamp: a worker whose
  lease ran out (paused, partitioned) and whose item another worker claimed since can't fail,
  finish or re-schedule that item any more.

`QueueLoop` runs a worker's rounds: at once when woken, else every `idle_poll` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from services.common.database import utc
from services.common.metrics import QueueStats

log = logging.getLogger(__name__)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class QueueTable:
    """Where a queue lives: the table and its bookkeeping columns, and the states that mean
    "waiting" and "given up"."""

    table: sa.Table
    id: sa.Column[Any]
    state: sa.Column[Any]
    due: sa.Column[Any]
    attempts: sa.Column[Any]
    error: sa.Column[Any]
    claimed_at: sa.Column[Any]
    pending: str = "pending"
    failed: str = "failed"


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    first_backoff: dt.timedelta = dt.timedelta(seconds=2)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {self.max_attempts}")

    def backoff(self, attempts: int) -> dt.timedelta:
        return self.first_backoff * (2 ** max(0, attempts - 1))


MAX_ERROR_LENGTH = 2000


class LeasedQueue:
    def __init__(self, name: str, where: QueueTable, lease: dt.timedelta, retry: RetryPolicy,
                 clock: Callable[[], dt.datetime] = utc_now) -> None:
        if lease <= dt.timedelta(0):
            raise ValueError(f"the lease of queue {name!r} must be positive, not {lease}")
        self.name = name
        self.where = where
        self.lease = lease
        self.retry = retry
        self._clock = clock

    def _due_now(self, now: dt.datetime) -> sa.ColumnElement[bool]:
        q = self.where
        return sa.and_(q.state == q.pending, sa.or_(q.due.is_(None), q.due <= now))

    def claim(self, conn: Connection, limit: int, *, order_by: Sequence[Any] = (),
              where: sa.ColumnElement[bool] | None = None) -> list[Row[Any]]:
        """Up to `limit` due items (among those matching `where`), leased to the caller: whole rows
        as claimed, whose `claimed_at` is the stamp the caller's later writes are fenced by."""
        q = self.where
        now = self._clock()
        order = order_by or (q.due, q.id)
        due = self._due_now(now) if where is None else sa.and_(self._due_now(now), where)
        query = sa.select(q.id).where(due).order_by(*order).limit(limit)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        ids = list(conn.execute(query).scalars())
        if not ids:
            return []
        conn.execute(q.table.update().where(q.id.in_(ids)).values({q.due: now + self.lease, q.claimed_at: now}))
        claimed = {row.id: row for row in conn.execute(sa.select(q.table).where(q.id.in_(ids)))}
        return [claimed[i] for i in ids]

    def held(self, current: Row[Any], claimed: Row[Any]) -> bool:
        """Whether `current` (the item as it is now) is still under the claim `claimed` returned."""
        name = self.where.claimed_at.name
        return bool(current._mapping[self.where.state.name] == self.where.pending
                    and current._mapping[name] == claimed._mapping[name])

    def fail(self, conn: Connection, rows: Sequence[Row[Any]], reason: str) -> None:
        """One failed attempt for each item still under the caller's claim (rows as `claim` returned
        them): retried after a backoff, or failed for good."""
        q = self.where
        now = self._clock()
        for row in sorted(rows, key=lambda r: r.id):
            attempts = row._mapping[q.attempts.name] + 1
            values: dict[Any, Any] = {q.attempts: attempts, q.error: reason[:MAX_ERROR_LENGTH], q.claimed_at: None}
            if attempts >= self.retry.max_attempts:
                values[q.state] = q.failed
            else:
                values[q.due] = now + self.retry.backoff(attempts)
            conn.execute(q.table.update().where(q.id == row.id, q.state == q.pending,
                                                q.claimed_at == row._mapping[q.claimed_at.name]).values(values))

    def finished(self) -> dict[Any, Any]:
        """The bookkeeping values of an item that left the queue, for the caller's own update."""
        q = self.where
        return {q.due: None, q.error: None, q.claimed_at: None}

    def record_each(self, conn: Connection, rows: Sequence[Row[Any]],
                    record_one: Callable[[Connection, Row[Any]], str], what: str = "the result") -> None:
        """`record_one` for each item in id order, each in a savepoint. It returns "" or why the item
        failed (a failed attempt); an exception the database raises fails that item alone, the
        reason saying it could not record `what`."""
        for row in sorted(rows, key=lambda r: r.id):
            try:
                with conn.begin_nested():
                    problem = record_one(conn, row)
            except Exception as exc:
                log.warning("could not record a queue item's result", exc_info=True,
                            extra={"fields": {"queue": self.name, "item": row.id}})
                problem = f"could not record {what}: {first_line(exc)}"
            if problem:
                self.fail(conn, [row], problem)

    def requeue(self, conn: Connection, condition: sa.ColumnElement[bool]) -> int:
        """Put matching items (in whatever state) back in the queue as new."""
        q = self.where
        return conn.execute(q.table.update().where(condition).values(
            {q.state: q.pending, q.due: self._clock(), q.attempts: 0, q.claimed_at: None})).rowcount

    def stats(self, conn: Connection) -> QueueStats:
        q = self.where
        now = self._clock()
        depth = conn.execute(sa.select(sa.func.count()).select_from(q.table).where(q.state == q.pending)).scalar_one()
        oldest = conn.execute(sa.select(sa.func.min(q.claimed_at)).where(q.state == q.pending)).scalar_one()
        age = (now - utc(oldest)).total_seconds() if oldest is not None else 0.0
        return QueueStats(depth=int(depth), oldest_lease_age=age)


class QueueLoop:
    """Runs `round` (True when it found work) until cancelled: again at once after work or a
    wake-up, else after `idle_poll` seconds (retries, expired leases, other replicas' items)."""

    def __init__(self, round: Callable[[], Awaitable[bool]], idle_poll: float, name: str) -> None:
        self._round = round
        self._idle_poll = idle_poll
        self._name = name
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        # Counts wake-ups, so a wake-up that lands while a round finds nothing is not lost.
        self._generation = 0

    def wake(self) -> None:
        """New work was committed: look now rather than at the next poll."""
        self._generation += 1
        self._idle.clear()
        self._wake.set()

    async def until_idle(self) -> None:
        """Until a round finds nothing due (tests and the demo wait on this instead of on time)."""
        self.wake()
        await self._idle.wait()

    async def run_forever(self) -> None:
        while True:
            seen = self._generation
            try:
                worked = await self._round()
            except Exception:
                log.exception("queue round failed", extra={"fields": {"queue": self._name}})
                worked = False
            if worked or self._generation != seen:
                continue
            self._idle.set()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._idle_poll)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else 'no details'}"
