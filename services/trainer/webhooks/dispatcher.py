"""Delivers the outbox: claims due deliveries under a lease (services/common/work_queue.py, so
replicas never send one at the same time, and one killed mid-attempt leaves it to another once
the lease runs out), sends each, records how it went.

- Per endpoint one attempt at a time, across all replicas (an endpoint with a delivery under a
  live lease is not claimed from), oldest event first: a receiver hears of a job's events in
  order unless one of them is waiting for a retry.
- Only 2xx succeeds. A failure waits the next entry of the retry schedule (with jitter, or the
  receiver's Retry-After when longer); once the schedule is spent the delivery has failed, and an
  endpoint that has not succeeded since that delivery's event is disabled, saying why.
- 410 Gone fails the delivery and disables the endpoint at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from services.common.hosting import Periodic
from services.common.transactions import Transactions
from services.common.work_queue import LeasedQueue, QueueLoop, QueueTable, RetryPolicy
from services.trainer import schema
from services.trainer.records import now
from services.trainer.webhooks.outbox import FAILED, PENDING, SUCCEEDED
from services.trainer.webhooks.sender import Attempt, WebhookSender
from services.trainer.webhooks.settings import WebhookSettings

log = logging.getLogger(__name__)
d = schema.webhook_deliveries.c
e = schema.webhook_endpoints.c
s = schema.webhook_secrets.c
# The longest a Retry-After may push an attempt back.
MAX_RETRY_AFTER = dt.timedelta(days=1)


@dataclass(frozen=True)
class Claimed:
    delivery: Row[Any]
    url: str
    secrets: list[str]


@dataclass(frozen=True)
class RetrySchedule:
    waits: Sequence[float]
    jitter: float

    @property
    def attempts(self) -> int:
        return len(self.waits)

    def wait_before(self, attempt: int) -> float:
        """Seconds to wait before attempt number `attempt` (1-based), jittered."""
        base = self.waits[min(attempt, self.attempts) - 1]
        return base * (1 + random.uniform(-self.jitter, self.jitter))


def live_secrets(conn: Connection, endpoint_ids: Sequence[str], at: dt.datetime) -> dict[str, list[str]]:
    """Each endpoint's secrets that still sign, newest first."""
    found: dict[str, list[str]] = {endpoint_id: [] for endpoint_id in endpoint_ids}
    rows = conn.execute(sa.select(s.endpoint_id, s.secret).where(
        s.endpoint_id.in_(list(endpoint_ids)), sa.or_(s.expire_time.is_(None), s.expire_time > at))
        .order_by(s.endpoint_id, s.create_time.desc()))
    for row in rows:
        found[row.endpoint_id].append(row.secret)
    return found


def disable(conn: Connection, endpoint_id: str, reason: str, at: dt.datetime) -> None:
    conn.execute(schema.webhook_endpoints.update().where(e.id == endpoint_id, e.enabled.is_(True)).values(
        enabled=False, disabled_reason=reason[:2000], disable_time=at, update_time=at))


class WebhookDispatcher:
    def __init__(self, transactions: Transactions, settings: WebhookSettings, sender: WebhookSender,
                 clock: Callable[[], dt.datetime] = now) -> None:
        self._tx = transactions
        self._sender = sender
        self._concurrency = settings.webhook_concurrency
        self._schedule = RetrySchedule(settings.webhook_retry_schedule, settings.webhook_retry_jitter)
        self._kept = dt.timedelta(days=settings.webhook_deliveries_kept_days)
        self._clock = clock
        self.queue = LeasedQueue(
            "webhooks", QueueTable(schema.webhook_deliveries, d.id, d.state, d.due, d.attempts, d.error,
                                   d.claimed_at, pending=PENDING, failed=FAILED),
            dt.timedelta(seconds=settings.webhook_lease_seconds), RetryPolicy(max_attempts=self._schedule.attempts),
            clock)
        self._loop = QueueLoop(self._round, settings.webhook_poll_seconds, "webhooks")
        self._in_flight: dict[str, asyncio.Task[None]] = {}  # endpoint id -> its attempt
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    @property
    def name(self) -> str:
        return "webhook deliveries"

    def retention(self) -> Periodic:
        """The background round that deletes settled deliveries past the retention."""
        return Periodic("webhook retention", min(3600.0, self._kept.total_seconds() / 4), self._prune)

    async def _prune(self) -> None:
        deleted = await self._tx.run(self.prune)
        if deleted:
            log.info("old webhook deliveries deleted", extra={"fields": {"deleted": deleted}})

    def prune(self, conn: Connection) -> int:
        """Deletes deliveries settled longer ago than the retention; returns how many."""
        before = self._clock() - self._kept
        return int(conn.execute(schema.webhook_deliveries.delete().where(
            d.state.in_([SUCCEEDED, FAILED]), d.last_attempt_time < before)).rowcount)

    async def run(self) -> None:
        """Deliver until cancelled (a Background of the service); the sender's connections are
        closed however it ends, also when this replica delivers nothing."""
        try:
            if self._concurrency > 0:
                await self._deliver_until_cancelled()
        finally:
            await self._sender.close()

    async def close(self) -> None:
        """Closes the sender's connections (again: closing twice is harmless)."""
        await self._sender.close()

    async def _deliver_until_cancelled(self) -> None:
        self._event_loop = asyncio.get_running_loop()
        self._stopping = False
        rounds = asyncio.create_task(self._loop.run_forever(), name="webhook rounds")
        try:
            await asyncio.shield(rounds)
        finally:
            # Python 3.11's asyncio.wait_for returns a result that arrives together with a
            # cancellation instead of raising it, so a busy loop could miss its cancel; the flag
            # stops it at its next round whatever happens to the cancel.
            self._stopping = True
            rounds.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rounds
            tasks = list(self._in_flight.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def wake(self) -> None:
        """Deliveries were committed (called from any thread)."""
        loop = self._event_loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._loop.wake)

    async def _round(self) -> bool:
        if self._stopping:
            raise asyncio.CancelledError
        free = self._concurrency - len(self._in_flight)
        if free <= 0:
            return False
        claimed = await self._tx.run(functools.partial(self._claim, limit=free, busy=set(self._in_flight)))
        for item in claimed:
            endpoint_id = item.delivery.endpoint_id
            self._in_flight[endpoint_id] = asyncio.create_task(self._deliver(item), name=f"webhook {endpoint_id}")
        return bool(claimed)

    def _claim(self, conn: Connection, limit: int, busy: set[str], only: str | None = None) -> list[Claimed]:
        """The oldest due delivery of up to `limit` endpoints not `busy` (or of endpoint `only`), leased."""
        at = self._clock()
        enabled = sa.select(e.id).where(e.enabled.is_(True))
        # An endpoint with a delivery under a live lease (this replica's or another's) waits for
        # it: order holds across replicas, not only within one.
        other = schema.webhook_deliveries.alias("claimed")
        leased = sa.select(other.c.id).where(other.c.endpoint_id == d.endpoint_id, other.c.state == PENDING,
                                             other.c.claimed_at.is_not(None), other.c.due > at)
        due = sa.and_(d.state == PENDING, sa.or_(d.due.is_(None), d.due <= at), d.endpoint_id.in_(enabled),
                      ~leased.exists())
        if only is not None:
            due = sa.and_(due, d.endpoint_id == only)
        elif busy:
            due = sa.and_(due, d.endpoint_id.not_in(list(busy)))
        first: dict[str, str] = {}
        for row in conn.execute(sa.select(d.id, d.endpoint_id).where(due).order_by(d.create_time, d.id)
                                .limit(limit * 20)):
            first.setdefault(row.endpoint_id, row.id)
            if len(first) >= limit:
                break
        if not first:
            return []
        rows = self.queue.claim(conn, limit, where=d.id.in_(list(first.values())))
        if not rows:
            return []
        endpoints = {row.id: row.url for row in conn.execute(sa.select(e.id, e.url).where(
            e.id.in_([r.endpoint_id for r in rows])))}
        secrets = live_secrets(conn, list(endpoints), at)
        return [Claimed(row, endpoints[row.endpoint_id], secrets[row.endpoint_id]) for row in rows]

    async def _deliver(self, item: Claimed) -> None:
        """Send `item`, then each next due delivery of its endpoint: the outcome of one and the
        claim of the next share a transaction."""
        endpoint_id = item.delivery.endpoint_id
        next_item: Claimed | None = item
        try:
            while next_item is not None and not self._stopping:
                delivery = next_item.delivery
                attempt = await self._sender.send(next_item.url, delivery.event_id, delivery.payload,
                                                  next_item.secrets)
                next_item = await self._tx.run(functools.partial(self._record_and_claim_next, claimed=delivery,
                                                                 attempt=attempt))
        except asyncio.CancelledError:
            raise
        except Exception:
            # Its lease runs out and it is sent again: at least once, never lost.
            log.exception("could not record a webhook attempt", extra={"fields": {"endpoint": endpoint_id}})
        finally:
            self._in_flight.pop(endpoint_id, None)
            self._loop.wake()

    def _record_and_claim_next(self, conn: Connection, claimed: Row[Any], attempt: Attempt) -> Claimed | None:
        self._record(conn, claimed, attempt)
        following = self._claim(conn, 1, set(), only=claimed.endpoint_id)
        return following[0] if following else None

    def _record(self, conn: Connection, claimed: Row[Any], attempt: Attempt) -> None:
        at = self._clock()
        attempts = claimed.attempts + 1
        values: dict[str, Any] = {"attempts": attempts, "status_code": attempt.status_code,
                                  "latency_ms": round(attempt.latency * 1000, 3), "error": attempt.error or None,
                                  "last_attempt_time": at, "claimed_at": None}
        disabled = ""
        if attempt.succeeded:
            values.update(state=SUCCEEDED, due=None)
        elif attempt.gone:
            values.update(state=FAILED, due=None)
            disabled = f"the receiver answered 410 Gone to the delivery of {claimed.event_id}"
        elif attempts < self._schedule.attempts:
            wait = self._schedule.wait_before(attempts + 1)
            if attempt.retry_after is not None:
                wait = max(wait, min(attempt.retry_after, MAX_RETRY_AFTER.total_seconds()))
            values.update(due=at + dt.timedelta(seconds=wait))
        else:
            values.update(state=FAILED, due=None)
            if attempts == self._schedule.attempts and not self._succeeded_since(conn, claimed):
                disabled = (f"all {attempts} attempts of the delivery of {claimed.event_id} ({claimed.event_type}) "
                            f"failed, with nothing delivered since; the last: {attempt.error}")
        # Fenced by the claim: a replay or another replica's claim since then wins.
        updated = conn.execute(schema.webhook_deliveries.update().where(
            d.id == claimed.id, d.state == PENDING, d.claimed_at == claimed.claimed_at).values(values)).rowcount
        if not updated:
            return
        if attempt.succeeded:
            conn.execute(schema.webhook_endpoints.update().where(e.id == claimed.endpoint_id).values(
                last_success_time=at))
        if disabled:
            disable(conn, claimed.endpoint_id, disabled, at)
            log.warning("webhook endpoint disabled", extra={"fields": {"endpoint": claimed.endpoint_id,
                                                                       "reason": disabled}})

    @staticmethod
    def _succeeded_since(conn: Connection, claimed: Row[Any]) -> bool:
        last = conn.execute(sa.select(e.last_success_time).where(e.id == claimed.endpoint_id)).scalar_one_or_none()
        return last is not None and _utc(last) >= _utc(claimed.create_time)


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
