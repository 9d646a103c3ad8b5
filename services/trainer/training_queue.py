"""The training queue on the job table: positions, claims under a lease, lost workers.

Claims go through the kit's leased work queue (services/common/work_queue.py: `SKIP LOCKED` on
PostgreSQL, so two replicas never hand out one job twice). Every write a worker causes is
fenced by its `lease_id`: a worker whose lease ran out and whose job another worker took can't
touch that job any more. Positions are recomputed whenever the queue changes and stored on the
jobs, each change also an event in the job's log (what a watcher sees as "position 3 -> 2").
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from google.rpc import code_pb2, status_pb2
from sqlalchemy.engine import Connection, Row

from kiln.v1 import trainer_pb2 as pb
from kiln.v1 import trainer_worker_pb2 as wpb
from services.common.work_queue import LeasedQueue, QueueTable, RetryPolicy
from services.trainer import records, schema
from services.trainer.event_log import EventLog
from services.trainer.queue_order import WaitingJob, finish_times, queue_order

j = schema.training_jobs.c
FAMILY_OF = {1: "sd15", 2: "sdxl"}
_BATCH = 400
# The key of the PostgreSQL advisory lock that queue changes take ("kiln" in ASCII).
_ADVISORY_LOCK = sa.text("SELECT pg_advisory_xact_lock(1801677934)")


@dataclass(frozen=True)
class QueueRules:
    lease: dt.timedelta
    max_attempts: int
    max_running_per_tenant: int
    # Workers seen within this long count towards ETAs.
    worker_seen: dt.timedelta
    retry_backoff: dt.timedelta = dt.timedelta(seconds=5)


@dataclass(frozen=True)
class Claimed:
    row: Row[Any]
    lease_id: str


def failure_status(message: str, code: int = code_pb2.ABORTED) -> status_pb2.Status:
    return status_pb2.Status(code=code, message=message[:2000])


class TrainingQueue:
    def __init__(self, rules: QueueRules, events: EventLog,
                 clock: Callable[[], dt.datetime] = records.now) -> None:
        self.rules = rules
        self.events = events
        self._clock = clock
        self.leased = LeasedQueue(
            "training", QueueTable(schema.training_jobs, j.id, j.state, j.due, j.attempts, j.error, j.claimed_at,
                                   pending=schema.QUEUED, failed=schema.FAILED),
            rules.lease, RetryPolicy(max_attempts=rules.max_attempts), clock)

    def lock(self, conn: Connection) -> None:
        """Serialise transactions that change the queue (PostgreSQL; SQLite serialises every writer).
        Taken before any job row is locked: each of them rewrites many jobs' positions, and two
        doing so in different orders would deadlock. Re-entrant within a transaction."""
        if conn.dialect.name == "postgresql":
            conn.execute(_ADVISORY_LOCK)

    # ----- positions -----

    def _queued_rows(self, conn: Connection) -> list[Row[Any]]:
        return list(conn.execute(sa.select(j.id, j.tenant, j.enqueue_time, j.gpu_seconds, j.lease_id, j.due,
                                           j.queue_position, j.progress, j.state, j.family, j.memory_bytes,
                                           j.device, j.cancel_requested).where(j.state == schema.QUEUED)))

    def live_workers(self, conn: Connection, at: dt.datetime) -> int:
        w = schema.training_workers.c
        return int(conn.execute(sa.select(sa.func.count()).where(w.last_seen >= at - self.rules.worker_seen))
                   .scalar_one())

    def order(self, conn: Connection, at: dt.datetime) -> tuple[list[Row[Any]], list[Row[Any]], dict[str, float]]:
        """(waiting rows in queue order, running rows, job id -> seconds until it finishes)."""
        rows = self._queued_rows(conn)
        running = [r for r in rows if records.is_running(r, at)]
        waiting = {r.id: r for r in rows if not records.is_running(r, at)}
        ordered = queue_order([WaitingJob(r.id, r.tenant, records.aware(r.enqueue_time), r.gpu_seconds)  # type: ignore[arg-type]
                               for r in waiting.values()], Counter(r.tenant for r in running))
        remaining = {r.id: _remaining_seconds(r) for r in running}
        finishes = finish_times(ordered, list(remaining.values()), self.live_workers(conn, at))
        etas = {**remaining, **{job.id: end for job, end in zip(ordered, finishes, strict=True)}}
        return [waiting[job.id] for job in ordered], running, etas

    def reorder(self, conn: Connection) -> None:
        """Store every job's position; each one that moved gets a queued event with its new ETA."""
        self.lock(conn)
        at = self._clock()
        ordered, running, etas = self.order(conn, at)
        moved = {row.id: position for position, row in enumerate(ordered, start=1) if row.queue_position != position}
        ids = list(moved)
        for start in range(0, len(ids), _BATCH):
            chunk = ids[start:start + _BATCH]
            # One statement per chunk: the moves and the seqs of their events together, under the
            # rows' locks (a queue of a thousand jobs moves all of them when one starts).
            seqs: dict[str, int] = dict(conn.execute(
                schema.training_jobs.update().where(j.id.in_(chunk))
                .values(queue_position=sa.case({i: moved[i] for i in chunk}, value=j.id), last_seq=j.last_seq + 1)
                .returning(j.id, j.last_seq)).all())
            stamp = records.timestamp(at)
            conn.execute(schema.training_events.insert(), [
                {"job_id": i, "seq": seqs[i], "body": pb.TrainingEvent(
                    seq=seqs[i], time=stamp, queued=pb.QueuedEvent(position=moved[i], eta_seconds=round(etas[i], 1)),
                ).SerializeToString()} for i in chunk])
        started = [row.id for row in running if row.queue_position]
        if started:
            conn.execute(schema.training_jobs.update().where(j.id.in_(started)).values(queue_position=0))

    # ----- leases -----

    def expire_leases(self, conn: Connection) -> list[str]:
        """Jobs whose worker stopped reporting: back in the queue (at the head of their tenant's),
        or failed once they have lost `max_attempts` workers. Returns their ids."""
        self.lock(conn)
        at = self._clock()
        lost = list(conn.execute(sa.select(schema.training_jobs).where(
            j.state == schema.QUEUED, j.lease_id.is_not(None), j.due <= at).order_by(j.id)))
        for row in lost:
            # Still that lease, still run out (a report may have renewed it since the select).
            still = sa.select(j.id).where(j.id == row.id, j.lease_id == row.lease_id, j.due <= at)
            if conn.dialect.name == "postgresql":
                still = still.with_for_update()
            if conn.execute(still).first() is None:
                continue
            reason = f"worker {row.worker or '?'} stopped reporting (lease of {self.rules.lease.total_seconds():g} s " \
                     "ran out)"
            self._end_attempt(conn, row, reason, at, backoff=dt.timedelta(0))
        if lost:
            self.reorder(conn)
        return [row.id for row in lost]

    def _end_attempt(self, conn: Connection, row: Row[Any], reason: str, at: dt.datetime,
                     backoff: dt.timedelta) -> None:
        """An attempt that ended without an outcome: retried, or failed when none are left."""
        if row.cancel_requested:
            self.finish(conn, row, schema.CANCELLED, None, at)
            return
        if row.claims >= self.rules.max_attempts:
            message = f"gave up after {row.claims} attempts; the last: {reason}"
            self.finish(conn, row, schema.FAILED, failure_status(message), at)
            return
        conn.execute(schema.training_jobs.update().where(j.id == row.id, j.lease_id == row.lease_id).values(
            lease_id=None, claimed_at=None, due=at + backoff, error=reason, update_time=at))
        self.events.append(conn, row.id, [pb.TrainingEvent(requeued=pb.RequeuedEvent(
            reason=reason, resume_from_epoch=row.last_saved_epoch))], at)

    def retry(self, conn: Connection, row: Row[Any], reason: str) -> None:
        self._end_attempt(conn, row, reason, self._clock(), self.rules.retry_backoff)
        self.reorder(conn)

    def finish(self, conn: Connection, row: Row[Any], state: str, error: status_pb2.Status | None,
               at: dt.datetime | None = None) -> None:
        at = at or self._clock()
        values: dict[str, Any] = {**self.leased.finished(), "state": state, "lease_id": None, "queue_position": 0,
                                  "end_time": at, "update_time": at, "cancel_requested": False,
                                  "pending_controls": []}
        if error is not None:
            values["error_status"] = error.SerializeToString()
            values["error"] = error.message
        conn.execute(schema.training_jobs.update().where(j.id == row.id).values(values))
        finished = pb.FinishedEvent(state=records.FINAL_STATES[state])
        if error is not None:
            finished.error.CopyFrom(error)
        self.events.append(conn, row.id, [pb.TrainingEvent(finished=finished)], at)

    # ----- claims -----

    def claim(self, conn: Connection, worker_id: str, capabilities: wpb.WorkerCapabilities,
              lease_id: str) -> Claimed | None:
        self.lock(conn)
        at = self._clock()
        self.expire_leases(conn)
        families = {FAMILY_OF[f] for f in capabilities.families if f in FAMILY_OF}
        ordered, running, _ = self.order(conn, at)
        busy = Counter(r.tenant for r in running)
        for candidate in ordered:
            if families and candidate.family not in families:
                continue
            if capabilities.memory_bytes and candidate.memory_bytes > capabilities.memory_bytes:
                continue
            if candidate.device and candidate.device != capabilities.device:
                continue
            if busy[candidate.tenant] >= self.rules.max_running_per_tenant:
                continue
            due = records.aware(candidate.due)
            if due is not None and due > at:
                continue  # backing off after a failed attempt
            claimed = self.leased.claim(conn, 1, where=j.id == candidate.id)
            if not claimed:
                continue  # another replica holds it (PostgreSQL: locked, skipped)
            row = claimed[0]
            attempt = row.claims + 1
            conn.execute(schema.training_jobs.update().where(j.id == row.id).values(
                lease_id=lease_id, worker=worker_id, claims=attempt, report_index=0, pending_controls=[],
                start_time=row.start_time or at, update_time=at, error=None))
            self.events.append(conn, row.id, [pb.TrainingEvent(started=pb.StartedEvent(
                worker=worker_id, attempt=attempt, resumed_from_epoch=row.last_saved_epoch))], at)
            self.reorder(conn)
            return Claimed(conn.execute(sa.select(schema.training_jobs).where(j.id == row.id)).one(), lease_id)
        return None

    def leased_job(self, conn: Connection, job_id: str, lease_id: str) -> Row[Any] | None:
        """The job while `lease_id` still holds it (a lease that ran out but wasn't taken still does)."""
        query = sa.select(schema.training_jobs).where(j.id == job_id, j.lease_id == lease_id,
                                                      j.state == schema.QUEUED)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        return conn.execute(query).first()

    def renew(self, conn: Connection, job_id: str) -> None:
        at = self._clock()
        conn.execute(schema.training_jobs.update().where(j.id == job_id).values(due=at + self.rules.lease))


def _remaining_seconds(row: Row[Any]) -> float:
    if row.progress:
        progress = pb.TrainingProgress.FromString(row.progress)
        if progress.eta_seconds > 0:
            return float(progress.eta_seconds)
    return float(row.gpu_seconds)
