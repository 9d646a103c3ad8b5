"""Test generations waiting for a worker: the kit's leased work queue on their own table.

The rule between the two queues: a worker that is free takes a waiting generation before a
waiting training (a generation takes seconds and someone is watching it), and nothing interrupts
a running training, so a test waits at most for the trainings already running. Generations run
first in, first out.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection
from typing import Any

import sqlalchemy as sa
from google.rpc import code_pb2, status_pb2
from sqlalchemy.engine import Connection, Row

from services.common.work_queue import LeasedQueue, QueueTable, RetryPolicy
from services.trainer import records, schema

g = schema.generations.c
QUEUED, DONE, FAILED = "queued", "done", "failed"


class GenerationQueue:
    def __init__(self, lease: dt.timedelta, max_attempts: int,
                 clock: Callable[[], dt.datetime] = records.now) -> None:
        self.lease = lease
        self.max_attempts = max_attempts
        self._clock = clock
        self.leased = LeasedQueue(
            "generation", QueueTable(schema.generations, g.id, g.state, g.due, g.attempts, g.error, g.claimed_at,
                                     pending=QUEUED, failed=FAILED),
            lease, RetryPolicy(max_attempts=max_attempts), clock)

    def claim(self, conn: Connection, worker_id: str, families: Collection[str], lease_id: str) -> Row[Any] | None:
        self.expire_leases(conn)
        where = sa.and_(g.lease_id.is_(None), g.family.in_(list(families))) if families else g.lease_id.is_(None)
        claimed = self.leased.claim(conn, 1, order_by=(g.create_time, g.id), where=where)
        if not claimed:
            return None
        at = self._clock()
        conn.execute(schema.generations.update().where(g.id == claimed[0].id).values(
            lease_id=lease_id, worker=worker_id, claims=g.claims + 1, update_time=at))
        return conn.execute(sa.select(schema.generations).where(g.id == claimed[0].id)).one()

    def expire_leases(self, conn: Connection) -> list[str]:
        """Generations whose worker went silent start again (their images so far are dropped: the
        next worker renders them all again), or fail after `max_attempts` workers."""
        at = self._clock()
        lost = list(conn.execute(sa.select(schema.generations).where(
            g.state == QUEUED, g.lease_id.is_not(None), g.due <= at)))
        for row in lost:
            if not conn.execute(sa.select(g.id).where(g.id == row.id, g.lease_id == row.lease_id,
                                                      g.due <= at)).first():
                continue
            conn.execute(schema.generated_images.delete().where(schema.generated_images.c.generation_id == row.id))
            values: dict[str, Any] = {"lease_id": None, "claimed_at": None, "images": 0, "due": at, "update_time": at}
            if row.claims >= self.max_attempts:
                error = status_pb2.Status(code=code_pb2.ABORTED, message=f"gave up after {row.claims} attempts: "
                                          f"worker {row.worker} stopped reporting")
                values.update(state=FAILED, error=error.message, error_status=error.SerializeToString())
            # Only while it is still that lease, run out: another replica may have moved it since.
            conn.execute(schema.generations.update().where(
                g.id == row.id, g.lease_id == row.lease_id, g.due <= at).values(values))
        return [row.id for row in lost]

    def leased_row(self, conn: Connection, generation_id: str, lease_id: str) -> Row[Any] | None:
        query = sa.select(schema.generations).where(g.id == generation_id, g.lease_id == lease_id, g.state == QUEUED)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        return conn.execute(query).first()

    def leased_by(self, conn: Connection, lease_id: str) -> Row[Any] | None:
        return conn.execute(sa.select(schema.generations).where(g.lease_id == lease_id, g.state == QUEUED)).first()

    def renew(self, conn: Connection, generation_id: str) -> None:
        conn.execute(schema.generations.update().where(g.id == generation_id).values(due=self._clock() + self.lease))

    def position(self, conn: Connection, row: Row[Any]) -> int:
        """1 is next; 0 once a worker has it."""
        if row.lease_id is not None or row.state != QUEUED:
            return 0
        ahead = conn.execute(sa.select(sa.func.count()).where(
            g.state == QUEUED, g.lease_id.is_(None),
            sa.tuple_(g.create_time, g.id) < (row.create_time, row.id))).scalar_one()
        return int(ahead) + 1
