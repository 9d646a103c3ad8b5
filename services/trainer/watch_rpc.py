"""Following a job: its event stream, its per-step metrics, live controls, its artifacts."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import AsyncIterator

import grpc
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from kiln.v1 import trainer_pb2 as pb
from services.common.call_context import current_tenant
from services.common.errors import (
    FieldViolation,
    ServiceError,
    failed_precondition,
    invalid,
    invalid_field,
    not_found,
    parsed,
    stream_errors,
    unary_errors,
)
from services.common.object_streams import ObjectStream
from services.common.objectstore import ObjectNotFound
from services.trainer import records, schema
from services.trainer.artifacts import ArtifactRef, parse_artifact
from services.trainer.event_hub import woken
from services.trainer.event_log import pruned_error
from services.trainer.service_base import TrainerBase

j = schema.training_jobs.c
Control = pb.SendTrainingControlRequest.Control
EVENTS_PER_READ = 200
READ_CHUNK = 1024 * 1024
MAX_METRICS_PAGE = 10_000


class WatchRpcs(TrainerBase):
    @stream_errors
    async def WatchTrainingJob(self, request: pb.WatchTrainingJobRequest,
                               context: grpc.aio.ServicerContext) -> AsyncIterator[pb.TrainingEvent]:
        request = parsed(request)
        job_id = records.parse_job(request.name)
        tenant = current_tenant()
        if request.after_seq < 0:
            raise invalid_field("after_seq", "the last seq seen, or 0 for the whole log")
        cursor = request.after_seq
        with self._hub.subscribe(job_id) as wake:
            row = await self._tx.run(lambda conn: records.get_job(conn, tenant, job_id), read_only=True)
            if cursor > row.last_seq:
                raise ServiceError(grpc.StatusCode.OUT_OF_RANGE, f"after_seq {cursor} is past the job's last event "
                                   f"({row.last_seq})", "SEQ_OUT_OF_RANGE")
            if 0 < cursor < row.events_pruned_through:
                raise pruned_error(cursor, row.events_pruned_through, self._events.keep)
            read_database = True
            # Asked for the oldest kept and sent nothing yet: a prune meanwhile moves the start.
            from_oldest = request.after_seq == 0
            while True:
                events = self._hub.after(job_id, cursor)
                if not events and read_database:
                    events, finished = await self._tx.run(
                        functools.partial(self._next_events, tenant=tenant, job_id=job_id, cursor=cursor,
                                          from_oldest=from_oldest), read_only=True)
                    if finished and not events:
                        return
                for event in events:
                    yield event
                    cursor = event.seq
                    from_oldest = False
                    if event.HasField("finished"):
                        return
                if events and read_database:
                    continue  # catching up from the log
                # Woken with the news in memory: no database read; woken without it (a write
                # that didn't publish) or by the poll: read the log.
                woke = await woken(wake, self._settings.watch_poll_seconds)
                read_database = not woke or not self._hub.after(job_id, cursor)

    def _next_events(self, conn: Connection, tenant: str, job_id: str, cursor: int,
                     from_oldest: bool) -> tuple[list[pb.TrainingEvent], bool]:
        row = conn.execute(sa.select(j.state, j.last_seq, j.events_pruned_through).where(
            j.id == job_id, j.tenant == tenant)).first()
        if row is None:
            raise not_found(records.job_name(job_id), "training job")
        if cursor < row.events_pruned_through:
            if not from_oldest:  # a watcher that fell further behind than the log keeps
                raise pruned_error(cursor, row.events_pruned_through, self._events.keep)
            cursor = row.events_pruned_through
        events = self._events.read(conn, job_id, cursor, EVENTS_PER_READ) if row.last_seq > cursor else []
        if events and events[0].seq != cursor + 1 and not from_oldest:
            # Pruned between the two reads (PostgreSQL sees each statement's own snapshot).
            raise pruned_error(cursor, events[0].seq - 1, self._events.keep)
        return events, row.state != schema.QUEUED and row.last_seq <= cursor

    @unary_errors
    async def ListTrainingMetrics(self, request: pb.ListTrainingMetricsRequest,
                                  context: grpc.aio.ServicerContext) -> pb.ListTrainingMetricsResponse:
        request = parsed(request)
        job_id = records.parse_job(request.name)
        tenant = current_tenant()
        violations = []
        if request.start_step < 0:
            violations.append(FieldViolation("start_step", "0 or more"))
        if request.stride < 0:
            violations.append(FieldViolation("stride", "1 or more (0: every step)"))
        if not 0 <= request.page_size <= MAX_METRICS_PAGE:
            violations.append(FieldViolation("page_size", f"1..{MAX_METRICS_PAGE}"))
        if violations:
            raise invalid(violations)
        start, stride, size = max(1, request.start_step), max(1, request.stride), request.page_size or 1000
        m = schema.training_metrics.c

        def read(conn: Connection) -> pb.ListTrainingMetricsResponse:
            records.get_job(conn, tenant, job_id)
            query = sa.select(m.step, m.epoch, m.loss, m.smoothed_loss, m.learning_rates).where(
                m.job_id == job_id, m.step >= start)
            if stride > 1:
                query = query.where((m.step - start) % stride == 0)
            rows = list(conn.execute(query.order_by(m.step).limit(size + 1)))
            response = pb.ListTrainingMetricsResponse(metrics=[
                pb.StepMetrics(step=r.step, epoch=r.epoch, loss=r.loss, smoothed_loss=r.smoothed_loss,
                               learning_rates=r.learning_rates) for r in rows[:size]])
            if len(rows) > size:
                response.next_start_step = rows[size].step
            return response

        return await self._tx.run(read, read_only=True)

    @unary_errors
    async def SendTrainingControl(self, request: pb.SendTrainingControlRequest,
                                  context: grpc.aio.ServicerContext) -> pb.SendTrainingControlResponse:
        request = parsed(request)
        job_id = records.parse_job(request.name)
        if request.control not in (Control.CONTROL_SAMPLE_NOW, Control.CONTROL_SAVE_NOW):
            raise invalid_field("control", "CONTROL_SAMPLE_NOW or CONTROL_SAVE_NOW")

        def work(conn: Connection, tenant: str) -> pb.SendTrainingControlResponse:
            row = records.get_job(conn, tenant, job_id, lock=True)
            if not records.is_running(row, records.now()):
                raise failed_precondition("the job is not running; controls act on a running job", "JOB_NOT_RUNNING")
            pending = list(row.pending_controls)
            name = Control.Name(request.control)
            if name not in pending:
                pending.append(name)
            conn.execute(schema.training_jobs.update().where(j.id == job_id).values(pending_controls=pending))
            return pb.SendTrainingControlResponse()

        return await self._tx.idempotent("SendTrainingControl", request, pb.SendTrainingControlResponse, work)

    async def _check_owner(self, ref: ArtifactRef) -> None:
        """The artifact's job or model is the caller's (or the model is public)."""
        tenant = current_tenant()
        if ref.job_id:
            await self._tx.run(lambda conn: records.get_job(conn, tenant, ref.job_id), read_only=True)
        else:
            await self._tx.run(lambda conn: records.get_model(conn, tenant, ref.model_id), read_only=True)

    @stream_errors
    async def ReadArtifact(self, request: pb.ReadArtifactRequest,
                           context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ReadArtifactResponse]:
        request = parsed(request)
        ref = parse_artifact(request.name)
        await self._check_owner(ref)
        try:
            size = await self._tx.objects.run(self._store.size, ref.key)
            stream = await ObjectStream.open(self._tx.objects, self._store, ref.key, READ_CHUNK)
        except ObjectNotFound:
            raise not_found(request.name, "artifact") from None
        yield pb.ReadArtifactResponse(artifact=pb.Artifact(name=request.name, content_type=ref.content_type,
                                                           size_bytes=size))
        async for chunk in stream:
            yield pb.ReadArtifactResponse(chunk=chunk)

    @unary_errors
    async def GetArtifactUrl(self, request: pb.GetArtifactUrlRequest,
                             context: grpc.aio.ServicerContext) -> pb.GetArtifactUrlResponse:
        request = parsed(request)
        ref = parse_artifact(request.name)
        await self._check_owner(ref)
        if not await self._tx.objects.run(self._store.exists, ref.key):
            raise not_found(request.name, "artifact")
        ttl = dt.timedelta(seconds=self._settings.artifact_url_ttl_seconds)
        response = pb.GetArtifactUrlResponse(url=await self._tx.objects.run(self._store.presigned_get, ref.key, ttl))
        response.expire_time.FromDatetime(records.now() + ttl)
        return response
