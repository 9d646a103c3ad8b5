"""A job's event log: seq 1, 2, 3 … per job, what WatchTrainingJob replays and follows.

A long run reports every step, so the log is bounded: once a job holds more than `keep` events
(plus a quarter, so the oldest go in batches rather than one per report) the oldest are deleted
and the job's `events_pruned_through` records up to which seq. What they said lives on in the
job itself (state, progress, per-epoch results) and in its metrics, which are never pruned; a
watcher asking for a pruned seq gets OUT_OF_RANGE, naming the oldest seq it can resume from.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import grpc
import sqlalchemy as sa
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.engine import Connection

from kiln.v1 import trainer_pb2 as pb
from services.common.errors import ServiceError
from services.trainer import schema
from services.trainer.records import now
from services.trainer.webhooks.outbox import Outbox

j = schema.training_jobs.c
e = schema.training_events.c


class EventLog:
    def __init__(self, keep: int, outbox: Outbox | None = None) -> None:
        if keep < 1:
            raise ValueError("keep at least one event per job")
        self.keep = keep
        # Webhooks of the events appended (started, epoch saved, finished), in the same transaction.
        self.outbox = outbox
        self._slack = max(1, keep // 4)

    def append(self, conn: Connection, job_id: str, events: Iterable[pb.TrainingEvent],
               at: dt.datetime | None = None) -> int:
        """Add events with the next seqs; returns the last seq. The counter lives on the job row,
        so two writers of one job queue behind each other's row lock."""
        batch = list(events)
        if not batch:
            return 0
        last, pruned, tenant = conn.execute(schema.training_jobs.update().where(j.id == job_id)
                                            .values(last_seq=j.last_seq + len(batch))
                                            .returning(j.last_seq, j.events_pruned_through, j.tenant)).one()
        at = at or now()
        stamp = Timestamp()
        stamp.FromDatetime(at)
        rows = []
        for offset, event in enumerate(batch):
            event.seq = last - len(batch) + offset + 1
            event.time.CopyFrom(stamp)
            rows.append({"job_id": job_id, "seq": event.seq, "body": event.SerializeToString()})
        conn.execute(schema.training_events.insert(), rows)
        if self.outbox is not None:
            self.outbox.record_training(conn, tenant, job_id, batch, at)
        if last - pruned > self.keep + self._slack:
            self.prune(conn, job_id, last - self.keep)
        return int(last)

    def prune(self, conn: Connection, job_id: str, through: int) -> None:
        """Forget the job's events up to seq `through` (rows that queue reordering wrote
        directly are counted in `last_seq` as well, so they go with the rest)."""
        conn.execute(schema.training_jobs.update().where(j.id == job_id, j.events_pruned_through < through)
                     .values(events_pruned_through=through))
        conn.execute(schema.training_events.delete().where(e.job_id == job_id, e.seq <= through))

    @staticmethod
    def read(conn: Connection, job_id: str, after_seq: int, limit: int) -> list[pb.TrainingEvent]:
        rows = conn.execute(sa.select(e.body).where(e.job_id == job_id, e.seq > after_seq)
                            .order_by(e.seq).limit(limit))
        return [pb.TrainingEvent.FromString(row.body) for row in rows]


def pruned_error(after_seq: int, pruned_through: int, keep: int) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.OUT_OF_RANGE,
        f"events up to seq {pruned_through} are no longer kept (a job keeps its latest {keep}); watch with "
        f"after_seq={pruned_through} (or 0) for the oldest kept, and read the job's state with GetTrainingJob "
        "and its loss history with ListTrainingMetrics",
        "SEQ_PRUNED", metadata={"after_seq": str(after_seq), "oldest_kept_seq": str(pruned_through + 1)})
