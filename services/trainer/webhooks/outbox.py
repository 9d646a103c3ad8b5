"""The outbox: deliveries written in the same transaction as the event they tell of, so an event
that commits is delivered (even if the process dies the next instant) and one rolled back never is.

`record` inserts one delivery per enabled endpoint of the tenant subscribed to the event's type;
once that transaction commits, the dispatcher is woken (`on_commit`) instead of waiting for its
next poll.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from kiln.v1 import trainer_pb2 as pb
from services.trainer import schema
from services.trainer.webhooks import events

PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"
e = schema.webhook_endpoints.c


def new_delivery_id() -> str:
    return secrets.token_hex(8)


class Outbox:
    def __init__(self, on_commit: Callable[[], None] | None = None) -> None:
        self._on_commit = on_commit

    def wake_on_commit(self, on_commit: Callable[[], None]) -> None:
        """Who to tell when deliveries were committed (the dispatcher; set once it exists)."""
        self._on_commit = on_commit

    def record(self, conn: Connection, tenant: str, event_type: str, data: dict[str, Any],
               at: dt.datetime) -> int:
        """Deliveries of one event to the tenant's endpoints that want it; returns how many."""
        endpoints = [row.id for row in conn.execute(sa.select(e.id, e.event_types).where(
            e.tenant == tenant, e.enabled.is_(True))) if event_type in row.event_types]
        if not endpoints:
            return 0
        self.insert(conn, tenant, endpoints, events.new_event_id(), event_type, events.payload(event_type, at, data),
                    at)
        return len(endpoints)

    def insert(self, conn: Connection, tenant: str, endpoint_ids: Iterable[str], event_id: str, event_type: str,
               body: str, at: dt.datetime) -> list[str]:
        rows = [{"id": new_delivery_id(), "endpoint_id": endpoint_id, "tenant": tenant, "event_id": event_id,
                 "event_type": event_type, "payload": body, "state": PENDING, "due": at, "attempts": 0,
                 "create_time": at} for endpoint_id in endpoint_ids]
        if rows:
            conn.execute(schema.webhook_deliveries.insert(), rows)
            self.wake_after(conn)
        return [str(row["id"]) for row in rows]

    def record_training(self, conn: Connection, tenant: str, job_id: str, logged: Iterable[pb.TrainingEvent],
                        at: dt.datetime) -> None:
        """The webhooks a job's newly logged events make (started, epoch saved, finished)."""
        name = f"trainingJobs/{job_id}"
        for offset, event in enumerate(logged):
            made = events.training_event(name, event)
            if made is not None:
                # A microsecond apart: deliveries go out in the order of their create times.
                self.record(conn, tenant, *made, at + dt.timedelta(microseconds=offset))

    def wake_after(self, conn: Connection) -> None:
        """Wake the dispatcher once this transaction commits."""
        if self._on_commit is None:
            return
        # Before the commit itself returns, but its locks are held until it has: a claim that the
        # wake-up starts waits on them (SQLite's writer lock) or, at worst, finds the rows at the
        # next poll.
        sa.event.listen(conn, "commit", self._committed, once=True)

    def _committed(self, conn: Connection) -> None:
        if self._on_commit is not None:
            self._on_commit()
