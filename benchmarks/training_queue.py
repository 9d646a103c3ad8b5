"""The training queue with 1000 waiting jobs from 50 tenants, on SQLite: what a create (insert +
recomputed positions), a list's ETAs (the whole order) and a claim cost, against the floor of
reading every waiting row once in the same run."""

from __future__ import annotations

import datetime as dt
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from kiln.v1 import dataset_pb2 as dpb
from kiln.v1 import trainer_pb2 as pb
from kiln.v1 import trainer_worker_pb2 as wpb
from services.common.database import create_engine
from services.trainer import records, schema
from services.trainer.event_log import EventLog
from services.trainer.server import SCHEMA
from services.trainer.training_queue import QueueRules, TrainingQueue

JOBS, TENANTS, ROUNDS = 1000, 50, 15


def _row(index: int, at: dt.datetime) -> dict[str, object]:
    return {"id": f"{index:016x}", "tenant": f"tenant{index % TENANTS}", "display_name": "", "dataset": "datasets/d",
            "snapshot": "datasets/d/snapshots/x", "family": "sd15", "base_model": "tiny-sd15", "preset": "",
            "request": b"", "config": "{}", "seed": 1, "estimate": pb.TrainingEstimate().SerializeToString(),
            "gpu_seconds": 60.0 + index % 7, "memory_bytes": 0, "state": schema.QUEUED, "due": at,
            "enqueue_time": at + dt.timedelta(milliseconds=index), "pending_controls": [], "create_time": at,
            "update_time": at}


def _median_ms(work: Callable[[], object]) -> float:
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        work()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main() -> dict[str, float]:
    queue = TrainingQueue(QueueRules(lease=dt.timedelta(seconds=30), max_attempts=3, max_running_per_tenant=2,
                                     worker_seen=dt.timedelta(minutes=2)), EventLog(keep=20_000))
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{Path(tmp) / 'trainer.db'}")
        SCHEMA.upgrade(engine)
        at = records.now()
        with engine.begin() as conn:
            conn.execute(schema.training_jobs.insert(), [_row(i, at) for i in range(JOBS)])
            queue.reorder(conn)
        counter = iter(range(JOBS, JOBS + 10 * ROUNDS))

        def floor() -> None:
            with engine.connect() as conn:
                list(conn.execute(sa.select(schema.training_jobs.c.id, schema.training_jobs.c.tenant,
                                            schema.training_jobs.c.enqueue_time)
                                  .where(schema.training_jobs.c.state == schema.QUEUED)))

        def create() -> None:
            # A new tenant's job goes ahead of everyone's second round: the worst case of moves.
            with engine.begin() as conn:
                row = _row(next(counter), records.now())
                row["tenant"] = f"new{row['id']}"
                conn.execute(schema.training_jobs.insert().values(row))
                queue.reorder(conn)

        def order() -> None:
            with engine.connect() as conn:
                queue.order(conn, records.now())

        capabilities = wpb.WorkerCapabilities(families=[dpb.MODEL_FAMILY_SD15])

        def claim() -> None:
            with engine.begin() as conn:
                queue.claim(conn, "bench", capabilities, records.new_id())

        floor_ms = _median_ms(floor)
        figures = {"read_floor_ms": floor_ms, "create_ms": _median_ms(create), "order_ms": _median_ms(order),
                   "claim_ms": _median_ms(claim)}
        engine.dispose()
    for name in ("create", "order", "claim"):
        figures[f"{name}_vs_floor"] = figures[f"{name}_ms"] / floor_ms
    print(f"training queue, {JOBS} waiting jobs from {TENANTS} tenants (SQLite, median of {ROUNDS}):")
    print(f"  read every waiting row (floor)  {floor_ms:8.1f} ms")
    for name, what in (("create", "create (insert + positions)"), ("order", "order + ETAs (get, list)"),
                       ("claim", "claim (expire, order, lease)")):
        print(f"  {what:32s}{figures[f'{name}_ms']:8.1f} ms  {figures[f'{name}_vs_floor']:5.1f}x floor")
    return figures


if __name__ == "__main__":
    main()
