"""The workers' side of the service: claim a job under a lease, report under it, finish it."""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from kiln.v1 import trainer_pb2 as pb
from kiln.v1 import trainer_worker_pb2 as wpb
from kiln.v1 import trainer_worker_pb2_grpc
from services.common.errors import (
    FieldViolation,
    failed_precondition,
    invalid,
    parsed,
    unary_errors,
)
from services.common.object_keys import training_job_prefix
from services.trainer import records, schema
from services.trainer.event_hub import QUEUE, woken
from services.trainer.generation_rpc import generation_assignment
from services.trainer.service_base import TrainerBase
from services.trainer.training_queue import FAMILY_OF, failure_status

j = schema.training_jobs.c
Outcome = wpb.FinishTrainingJobRequest.Outcome
MAX_EVENTS_PER_REPORT = 1000
_CLAIM_ID = re.compile(r"[0-9a-z]{8,32}")


def lease_lost(job: str) -> Exception:
    return failed_precondition(f"the lease on {job} is no longer this worker's: stop the job", "LEASE_LOST")


class WorkerRpcs(TrainerBase, trainer_worker_pb2_grpc.TrainingWorkerServiceServicer):
    @unary_errors
    async def ClaimTrainingJob(self, request: wpb.ClaimTrainingJobRequest,
                               context: grpc.aio.ServicerContext) -> wpb.ClaimTrainingJobResponse:
        request = parsed(request)
        if not request.worker_id or len(request.worker_id) > 128:
            raise invalid([FieldViolation("worker_id", "1..128 characters")])
        if request.claim_id and not _CLAIM_ID.fullmatch(request.claim_id):
            raise invalid([FieldViolation("claim_id", "8..32 characters of 0-9 and a-z")])
        wait = min(max(0.0, request.wait_seconds), self._settings.max_claim_wait_seconds)
        deadline = time.monotonic() + wait
        if request.claim_id:
            # Read only: the poll of an idle worker takes no write lock.
            again = await self._tx.run(functools.partial(self._claimed_before, lease_id=request.claim_id),
                                       read_only=True)
            if again is not None:
                response, renew = again
                await self._tx.run(renew)  # the worker starts on it now: a lease as long as a fresh claim's
                return response
        with self._hub.subscribe(QUEUE) as wake:
            while True:
                lease_id = request.claim_id or records.new_id()
                generation = await self._tx.run(functools.partial(self._claim_generation, request=request,
                                                                  lease_id=lease_id))
                if generation is not None:
                    return wpb.ClaimTrainingJobResponse(generation=generation_assignment(
                        generation, lease_id, self._queue.rules.lease.total_seconds()))
                claimed = await self._tx.run(functools.partial(self._claim, request=request, lease_id=lease_id))
                if claimed is not None:
                    self._hub.notify(claimed.id)
                    return wpb.ClaimTrainingJobResponse(assignment=self._assignment(claimed, lease_id))
                left = deadline - time.monotonic()
                if left <= 0:
                    return wpb.ClaimTrainingJobResponse()
                # New jobs wake us; leases running out and other replicas' jobs need the poll.
                await woken(wake, min(left, self._settings.queue_maintenance_seconds))

    def _claimed_before(self, conn: Connection, lease_id: str
                        ) -> tuple[wpb.ClaimTrainingJobResponse, Callable[[Connection], None]] | None:
        """The assignment a claim with this id was given while its lease holds, and what renews it."""
        row = conn.execute(sa.select(schema.training_jobs).where(
            j.lease_id == lease_id, j.state == schema.QUEUED)).first()
        if row is not None:
            return (wpb.ClaimTrainingJobResponse(assignment=self._assignment(row, lease_id)),
                    functools.partial(self._queue.renew, job_id=row.id))
        generation = self._deps.generations.leased_by(conn, lease_id)
        if generation is not None:
            return (wpb.ClaimTrainingJobResponse(generation=generation_assignment(
                generation, lease_id, self._queue.rules.lease.total_seconds())),
                functools.partial(self._deps.generations.renew, generation_id=generation.id))
        return None

    def _claim(self, conn: Connection, request: wpb.ClaimTrainingJobRequest, lease_id: str) -> Row[Any] | None:
        _seen(conn, request.worker_id, request.capabilities)
        claimed = self._queue.claim(conn, request.worker_id, request.capabilities, lease_id)
        return claimed.row if claimed is not None else None

    def _claim_generation(self, conn: Connection, request: wpb.ClaimTrainingJobRequest,
                          lease_id: str) -> Row[Any] | None:
        families = {FAMILY_OF[f] for f in request.capabilities.families if f in FAMILY_OF}
        return self._deps.generations.claim(conn, request.worker_id, families, lease_id)

    def _assignment(self, row: Row[Any], lease_id: str) -> wpb.TrainingAssignment:
        return wpb.TrainingAssignment(
            job=records.job_name(row.id), lease_id=lease_id, lease_seconds=self._queue.rules.lease.total_seconds(),
            attempt=row.claims, config_json=row.config, snapshot=row.snapshot,
            output_prefix=training_job_prefix(row.id), seed=row.seed)

    @unary_errors
    async def ReportTrainingProgress(self, request: wpb.ReportTrainingProgressRequest,
                                     context: grpc.aio.ServicerContext) -> wpb.ReportTrainingProgressResponse:
        request = parsed(request)
        job_id = records.parse_job(request.job, "job")
        _check_events(request.events)

        logged: list[pb.TrainingEvent] = []

        def work(conn: Connection) -> wpb.ReportTrainingProgressResponse:
            row = self._queue.leased_job(conn, job_id, request.lease_id)
            if row is None:
                raise lease_lost(request.job)
            # (A retried transaction records again: the list holds the committed attempt's.)
            logged[:] = self._record(conn, row, request.events)
            self._queue.renew(conn, job_id)
            w = schema.training_workers.c
            conn.execute(schema.training_workers.update().where(w.id == row.worker).values(last_seen=records.now()))
            controls = [pb.SendTrainingControlRequest.Control.Value(name) for name in row.pending_controls]
            if controls:
                conn.execute(schema.training_jobs.update().where(j.id == job_id).values(pending_controls=[]))
            return wpb.ReportTrainingProgressResponse(cancel_requested=row.cancel_requested, controls=controls)

        response = await self._tx.run(work)
        self._hub.publish(job_id, logged)
        return response

    @unary_errors
    async def FinishTrainingJob(self, request: wpb.FinishTrainingJobRequest,
                                context: grpc.aio.ServicerContext) -> wpb.FinishTrainingJobResponse:
        request = parsed(request)
        job_id = records.parse_job(request.job, "job")
        _check_events(request.events)
        if request.outcome == Outcome.OUTCOME_UNSPECIFIED:
            raise invalid([FieldViolation("outcome", "SUCCEEDED, FAILED, CANCELLED or RETRY")])

        def work(conn: Connection) -> None:
            self._queue.lock(conn)
            row = self._queue.leased_job(conn, job_id, request.lease_id)
            if row is None:
                raise lease_lost(request.job)
            self._record(conn, row, request.events)
            error = request.error if request.HasField("error") else None
            if request.outcome == Outcome.OUTCOME_SUCCEEDED:
                self._queue.finish(conn, row, schema.SUCCEEDED, None)
            elif request.outcome == Outcome.OUTCOME_CANCELLED:
                self._queue.finish(conn, row, schema.CANCELLED, None)
            elif request.outcome == Outcome.OUTCOME_FAILED:
                self._queue.finish(conn, row, schema.FAILED, error or failure_status("the worker gave no reason"))
            else:
                current = conn.execute(sa.select(schema.training_jobs).where(j.id == job_id)).one()
                self._queue.retry(conn, current, error.message if error else "the worker could not run it")
                return
            self._queue.reorder(conn)

        await self._tx.run(work)
        self._hub.notify(job_id)
        self._hub.notify(QUEUE)
        return wpb.FinishTrainingJobResponse()

    def _record(self, conn: Connection, row: Row[Any], events: Sequence[wpb.WorkerEvent]) -> list[pb.TrainingEvent]:
        """The report's events not recorded yet (a resent report repeats some), into the log and
        the job's progress, metrics and results."""
        fresh = [e for e in events if e.index > row.report_index]
        if not fresh:
            return []
        at = records.now()
        log: list[pb.TrainingEvent] = []
        values: dict[str, Any] = {"report_index": max(e.index for e in fresh), "update_time": at}
        metrics: list[dict[str, Any]] = []
        for event in fresh:
            kind = event.WhichOneof("kind")
            if kind == "progress":
                log.append(pb.TrainingEvent(progress=event.progress))
                values["progress"] = event.progress.SerializeToString()
                if event.progress.phase == "training" and event.progress.step > 0:
                    metrics.append({"job_id": row.id, "step": event.progress.step, "epoch": event.progress.epoch,
                                    "loss": event.progress.loss, "smoothed_loss": event.progress.smoothed_loss,
                                    "learning_rates": dict(event.progress.learning_rates)})
            elif kind == "epoch_saved":
                result = event.epoch_saved
                log.append(pb.TrainingEvent(epoch_saved=result))
                key = f"s{result.step:012d}" if result.on_request else f"e{result.epoch:06d}"
                r = schema.training_results.c
                conn.execute(schema.training_results.delete().where(r.job_id == row.id, r.key == key))
                conn.execute(schema.training_results.insert().values(
                    job_id=row.id, key=key, epoch=result.epoch, body=result.SerializeToString()))
                if not result.on_request:
                    values["last_saved_epoch"] = max(row.last_saved_epoch, result.epoch)
            elif kind == "previews_rendered":
                log.append(pb.TrainingEvent(previews_rendered=event.previews_rendered))
            elif kind == "log":
                log.append(pb.TrainingEvent(log=event.log))
        if metrics:
            m = schema.training_metrics.c
            # A resumed attempt trains again the steps after its checkpoint: the newer ones stand.
            conn.execute(schema.training_metrics.delete().where(
                m.job_id == row.id, m.step.in_([x["step"] for x in metrics])))
            conn.execute(schema.training_metrics.insert(), _last_per_step(metrics))
        conn.execute(schema.training_jobs.update().where(j.id == row.id).values(values))
        self._events.append(conn, row.id, log, at)
        return log


def _last_per_step(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return list({m["step"]: m for m in metrics}.values())


def _check_events(events: Sequence[wpb.WorkerEvent]) -> None:
    if len(events) > MAX_EVENTS_PER_REPORT:
        raise invalid([FieldViolation("events", f"at most {MAX_EVENTS_PER_REPORT} per report")])
    indexes = [e.index for e in events]
    if any(i < 1 for i in indexes) or indexes != sorted(set(indexes)):
        raise invalid([FieldViolation("events", "indexes from 1, increasing, each once")])


def _seen(conn: Connection, worker_id: str, capabilities: wpb.WorkerCapabilities) -> None:
    w = schema.training_workers.c
    at = records.now()
    updated = conn.execute(schema.training_workers.update().where(w.id == worker_id).values(
        capabilities=capabilities.SerializeToString(), last_seen=at)).rowcount
    if not updated:
        conn.execute(schema.training_workers.insert().values(
            id=worker_id, capabilities=capabilities.SerializeToString(), last_seen=at))
