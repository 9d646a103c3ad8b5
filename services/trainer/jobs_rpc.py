"""Training jobs: create (or only validate), get, list, cancel, delete, retrain."""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from typing import Any

import grpc
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from kiln.v1 import trainer_pb2 as pb
from services.common import object_keys
from services.common.call_context import current_tenant
from services.common.errors import (
    FieldViolation,
    failed_precondition,
    invalid,
    parsed,
    quota_exceeded,
    unary_errors,
)
from services.common.idempotency import check_request_id, request_fingerprint
from services.common.objectstore import ObjectNotFound
from services.common.pagination import page_size
from services.trainer import records, schema
from services.trainer.configs import (
    FAMILY_TO_PROTO,
    MergedConfig,
    apply_overrides,
    config_message,
    merge_request,
    valid_override_path,
)
from services.trainer.engine.config import TrainingConfig, parse_config
from services.trainer.engine.errors import InvalidTrainingConfig
from services.trainer.engine.estimate import estimate_training
from services.trainer.engine.snapshot import DatasetSnapshot, SnapshotError
from services.trainer.estimates import estimate_message, memory_bytes, required_device
from services.trainer.event_hub import QUEUE
from services.trainer.service_base import TrainerBase
from services.trainer.webhooks import events as webhook_events

log = logging.getLogger(__name__)
j = schema.training_jobs.c
State = pb.TrainingJob.State
MAX_DISPLAY_NAME = 200
_DB_STATES = {State.STATE_SUCCEEDED: schema.SUCCEEDED, State.STATE_FAILED: schema.FAILED,
              State.STATE_CANCELLED: schema.CANCELLED}


@dataclass(frozen=True)
class PreparedJob:
    """A create request checked and resolved: what its row is made of."""

    request: pb.TrainingJob
    snapshot_name: str
    family: str
    config: TrainingConfig
    estimate: pb.TrainingEstimate
    memory_bytes: int
    device: str


class JobRpcs(TrainerBase):
    @unary_errors
    async def CreateTrainingJob(self, request: pb.CreateTrainingJobRequest,
                                context: grpc.aio.ServicerContext) -> pb.TrainingJob:
        request = parsed(request)
        check_request_id(request.request_id)
        tenant = current_tenant()
        if request.request_id and not request.validate_only:
            earlier = await self._tx.run(lambda conn: self._tx.replay(
                conn, tenant, "CreateTrainingJob", request, pb.TrainingJob), read_only=True)
            if earlier is not None:
                return earlier
        job = request.training_job
        _check_source(job)
        if job.dataset:
            snapshot = await self._snapshots.snapshot_dataset(
                tenant, job.dataset, f"{request.request_id}:snapshot" if request.request_id else "",
                "training_job.dataset")
        else:
            snapshot = await self._snapshots.get_snapshot(tenant, job.snapshot, "training_job.snapshot")
        normalized = pb.TrainingJob()
        normalized.CopyFrom(job)
        normalized.snapshot = snapshot.name
        prepared = await self._prepare(normalized, "training_job.snapshot")
        if request.validate_only:
            return _preview_message(prepared)
        return await self._enqueue("CreateTrainingJob", request, prepared, retrained_from="")

    @unary_errors
    async def RetrainTrainingJob(self, request: pb.RetrainTrainingJobRequest,
                                 context: grpc.aio.ServicerContext) -> pb.TrainingJob:
        request = parsed(request)
        check_request_id(request.request_id)
        job_id = records.parse_job(request.name)
        tenant = current_tenant()
        bad = [FieldViolation(f"update_mask.paths[{i}]", "display_name, config or config.<field>")
               for i, path in enumerate(request.update_mask.paths) if not valid_override_path(path)]
        if bad:
            raise invalid(bad)

        def read(conn: Connection) -> tuple[pb.TrainingJob | None, pb.TrainingJob]:
            earlier = None
            if request.request_id and not request.validate_only:
                earlier = self._tx.replay(conn, tenant, "RetrainTrainingJob", request, pb.TrainingJob)
            row = records.get_job(conn, tenant, job_id)
            return earlier, pb.TrainingJob.FromString(row.request)

        earlier, original = await self._tx.run(read, read_only=True)
        if earlier is not None:
            return earlier
        retrained = apply_overrides(original, request.training_job, list(request.update_mask.paths))
        # The old job's snapshot, whatever its dataset has become since.
        retrained.ClearField("dataset")
        prepared = await self._prepare(retrained, "name")
        if request.validate_only:
            return _preview_message(prepared)
        return await self._enqueue("RetrainTrainingJob", request, prepared, retrained_from=records.job_name(job_id))

    async def _prepare(self, job: pb.TrainingJob, snapshot_field: str) -> PreparedJob:
        violations: list[FieldViolation] = []
        name = job.display_name.strip()
        if len(name) > MAX_DISPLAY_NAME or (name and not name.isprintable()):
            violations.append(FieldViolation("training_job.display_name", f"at most {MAX_DISPLAY_NAME} printable "
                                             "characters"))
        merged, problems = merge_request(job)
        violations += problems
        try:
            manifest = await self._tx.objects.run(self._store.get_bytes, object_keys.manifest_key_of(job.snapshot))
            snapshot = DatasetSnapshot.from_json(manifest)
        except ObjectNotFound:
            raise failed_precondition(f"the snapshot {job.snapshot} is gone (its dataset was deleted)",
                                      "SNAPSHOT_GONE", [FieldViolation(snapshot_field, "no longer exists")]) from None
        except SnapshotError as exc:
            raise failed_precondition(f"the snapshot can't be trained on: {exc}", "BAD_SNAPSHOT") from None
        if violations:
            raise invalid(violations)
        config, estimate = await self._cpu(self._resolve, merged, snapshot)
        entry = self._models.entry(config.base_model)
        assert entry is not None  # validation refused unknown models
        message = estimate_message(config, snapshot, estimate, entry.family)
        stored = pb.TrainingJob()
        stored.CopyFrom(job)
        stored.display_name = name
        return PreparedJob(stored, job.snapshot, entry.family, config, message,
                           memory_bytes(config, estimate, entry.family, entry.builtin), required_device(config))

    def _resolve(self, merged: MergedConfig, snapshot: DatasetSnapshot) -> tuple[TrainingConfig, Any]:
        try:
            config = parse_config(merged.values)
            if config.seed is None:
                # Drawn now and kept, so every attempt (and a resumed one) trains the same run.
                config = config.model_copy(update={"seed": random.SystemRandom().randrange(2**31)})
            estimate = estimate_training(config, snapshot, self._models, probe_hardware=False)
        except InvalidTrainingConfig as exc:
            raise invalid([FieldViolation(merged.path_of(v.field), v.message) for v in exc.violations]) from None
        return config, estimate

    async def _enqueue(self, method: str, request: Any, prepared: PreparedJob, retrained_from: str) -> pb.TrainingJob:
        settings = self._settings

        def work(conn: Connection, tenant: str) -> pb.TrainingJob:
            self._queue.lock(conn)
            queued = conn.execute(sa.select(sa.func.count()).where(
                j.tenant == tenant, j.state == schema.QUEUED)).scalar_one()
            if queued >= settings.max_queued_jobs_per_tenant:
                raise quota_exceeded(
                    f"at most {settings.max_queued_jobs_per_tenant} jobs may wait or run at once per tenant; "
                    "cancel one or wait for one to finish", "QUEUED_JOBS_PER_TENANT",
                    subject=f"tenant:{tenant}", description="max_queued_jobs_per_tenant",
                    limit=str(settings.max_queued_jobs_per_tenant))
            at = records.now()
            job_id = records.new_id()
            conn.execute(schema.training_jobs.insert().values(
                id=job_id, tenant=tenant, display_name=prepared.request.display_name,
                dataset=prepared.request.dataset or _dataset_of(prepared.snapshot_name),
                snapshot=prepared.snapshot_name, family=prepared.family, base_model=prepared.config.base_model,
                preset=prepared.request.preset, request=prepared.request.SerializeToString(),
                config=prepared.config.model_dump_json(), seed=prepared.config.seed,
                estimate=prepared.estimate.SerializeToString(), gpu_seconds=prepared.estimate.gpu_seconds,
                memory_bytes=prepared.memory_bytes, device=prepared.device, state=schema.QUEUED, due=at,
                enqueue_time=at, pending_controls=[], retrained_from=retrained_from, create_time=at, update_time=at))
            self._queue.reorder(conn)
            self._deps.outbox.record(conn, tenant, *webhook_events.queued(records.job_name(job_id)), at)
            return self._job_message(conn, records.get_job(conn, tenant, job_id))

        fingerprint = request_fingerprint(request)
        response = await self._tx.idempotent(method, request, pb.TrainingJob, work, fingerprint=fingerprint)
        self._hub.notify(QUEUE)
        return response

    def _job_message(self, conn: Connection, row: Any) -> pb.TrainingJob:
        at = records.now()
        eta = 0.0
        if row.state == schema.QUEUED:
            _, _, etas = self._queue.order(conn, at)
            eta = etas.get(row.id, 0.0)
        return records.job_message(row, records.results_of(conn, [row.id])[row.id], at, round(eta, 1))

    @unary_errors
    async def GetTrainingJob(self, request: pb.GetTrainingJobRequest,
                             context: grpc.aio.ServicerContext) -> pb.TrainingJob:
        job_id = records.parse_job(parsed(request).name)
        tenant = current_tenant()
        return await self._tx.run(lambda conn: self._job_message(conn, records.get_job(conn, tenant, job_id)),
                                  read_only=True)

    @unary_errors
    async def ListTrainingJobs(self, request: pb.ListTrainingJobsRequest,
                               context: grpc.aio.ServicerContext) -> pb.ListTrainingJobsResponse:
        request = parsed(request)
        tenant = current_tenant()
        size = page_size(request.page_size, 20, 100)
        states = sorted(set(request.states))
        if State.STATE_UNSPECIFIED in states:
            raise invalid([FieldViolation("states", "name states, not STATE_UNSPECIFIED")])

        def read(conn: Connection) -> pb.ListTrainingJobsResponse:
            at = records.now()
            query = sa.select(schema.training_jobs).where(j.tenant == tenant)
            if states:
                query = query.where(sa.or_(*(_state_condition(s, at) for s in states)))
            rows, token = self._page_tokens.keyset_page(
                conn, query, j.create_time, j.id, request.page_token, size,
                f"trainingJobs:{tenant}:{json.dumps(states)}")
            results = records.results_of(conn, [r.id for r in rows])
            etas: dict[str, float] = {}
            if any(r.state == schema.QUEUED for r in rows):
                _, _, etas = self._queue.order(conn, at)
            return pb.ListTrainingJobsResponse(
                training_jobs=[records.job_message(r, results[r.id], at, round(etas.get(r.id, 0.0), 1)) for r in rows],
                next_page_token=token)

        return await self._tx.run(read, read_only=True)

    @unary_errors
    async def CancelTrainingJob(self, request: pb.CancelTrainingJobRequest,
                                context: grpc.aio.ServicerContext) -> pb.TrainingJob:
        request = parsed(request)
        job_id = records.parse_job(request.name)

        def work(conn: Connection, tenant: str) -> pb.TrainingJob:
            self._queue.lock(conn)
            row = records.get_job(conn, tenant, job_id, lock=True)
            at = records.now()
            if row.state != schema.QUEUED:
                raise failed_precondition(f"the job has already {row.state}; only a queued or running job can be "
                                          "cancelled", "JOB_FINISHED")
            if records.is_running(row, at):
                if not row.cancel_requested:
                    conn.execute(schema.training_jobs.update().where(j.id == job_id).values(
                        cancel_requested=True, update_time=at))
                    self._events.append(conn, job_id, [pb.TrainingEvent(log=pb.LogEvent(
                        level=pb.LogEvent.LEVEL_INFO, message="cancellation requested; stopping within a step"))],
                        at)
            else:
                self._queue.finish(conn, row, schema.CANCELLED, None, at)
                self._queue.reorder(conn)
            return self._job_message(conn, records.get_job(conn, tenant, job_id))

        response = await self._tx.idempotent("CancelTrainingJob", request, pb.TrainingJob, work)
        self._hub.notify(job_id)
        return response

    @unary_errors
    async def DeleteTrainingJob(self, request: pb.DeleteTrainingJobRequest,
                                context: grpc.aio.ServicerContext) -> pb.DeleteTrainingJobResponse:
        request = parsed(request)
        job_id = records.parse_job(request.name)

        def work(conn: Connection, tenant: str) -> pb.DeleteTrainingJobResponse:
            self._queue.lock(conn)
            row = records.get_job(conn, tenant, job_id, lock=True)
            if records.is_running(row, records.now()):
                raise failed_precondition("the job is running: cancel it, and delete it once it has stopped",
                                          "JOB_RUNNING")
            records.delete_job_records(conn, job_id)
            self._queue.reorder(conn)
            return pb.DeleteTrainingJobResponse()

        response = await self._tx.idempotent("DeleteTrainingJob", request, pb.DeleteTrainingJobResponse, work)
        self._hub.notify(job_id)
        try:
            await self._tx.objects.run(self._store.delete_prefix, object_keys.training_job_prefix(job_id))
        except Exception:
            # The sweep takes objects no job owns; the record is gone either way.
            log.exception("could not delete a deleted job's artifacts", extra={"fields": {"job": job_id}})
        return response


def _check_source(job: pb.TrainingJob) -> None:
    if bool(job.dataset) == bool(job.snapshot):
        raise invalid([FieldViolation("training_job.dataset", "give a dataset (snapshotted now) or a snapshot, "
                                      "not both and not neither")])
    if job.snapshot:
        try:
            object_keys.manifest_key_of(job.snapshot)
        except ValueError:
            raise invalid([FieldViolation("training_job.snapshot", "a snapshot's name: "
                                          "datasets/{dataset}/snapshots/{sha256}")]) from None


def _dataset_of(snapshot_name: str) -> str:
    return snapshot_name.split("/snapshots/", 1)[0]


def _state_condition(state: State.ValueType, at: Any) -> sa.ColumnElement[bool]:
    running = sa.and_(j.state == schema.QUEUED, j.lease_id.is_not(None), j.due > at)
    if state == State.STATE_RUNNING:
        return running
    if state == State.STATE_QUEUED:
        return sa.and_(j.state == schema.QUEUED, sa.not_(running))
    return j.state == _DB_STATES[state]


def _preview_message(prepared: PreparedJob) -> pb.TrainingJob:
    """What validate_only answers: the job as it would be queued, without a name."""
    job = pb.TrainingJob()
    job.CopyFrom(prepared.request)
    job.snapshot = prepared.snapshot_name
    job.config.CopyFrom(config_message(prepared.config))
    job.estimate.CopyFrom(prepared.estimate)
    job.seed = prepared.config.seed or 0
    job.family = FAMILY_TO_PROTO[prepared.family]
    return job
