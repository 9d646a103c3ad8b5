"""Reading and writing the trainer's records: jobs, their event log, metrics and results."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.engine import Connection, Row

from kiln.v1 import trainer_pb2 as pb
from services.common.database import utc
from services.common.errors import invalid_field, not_found
from services.trainer import schema
from services.trainer.configs import FAMILY_TO_PROTO, config_message
from services.trainer.engine.config import parse_config

JOB_PREFIX = "trainingJobs/"
_ID_CHARS = set("0123456789abcdef")
j = schema.training_jobs.c
State = pb.TrainingJob.State


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def aware(value: dt.datetime | None) -> dt.datetime | None:
    return utc(value) if value is not None else None


def new_id() -> str:
    return secrets.token_hex(8)


def job_name(job_id: str) -> str:
    return JOB_PREFIX + job_id


def parse_job(name: str, field: str = "name") -> str:
    job_id = name.removeprefix(JOB_PREFIX)
    if not name.startswith(JOB_PREFIX) or not job_id or len(job_id) > 32 or not set(job_id) <= _ID_CHARS:
        raise invalid_field(field, "a training job's name: trainingJobs/{id}")
    return job_id


def timestamp(value: dt.datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(aware(value))  # type: ignore[arg-type]
    return stamp


def get_job(conn: Connection, tenant: str, job_id: str, *, lock: bool = False) -> Row[Any]:
    """The tenant's job; another tenant's is as absent as one that never existed."""
    query = sa.select(schema.training_jobs).where(j.id == job_id, j.tenant == tenant)
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).first()
    if row is None:
        raise not_found(job_name(job_id), "training job")
    return row


def is_running(row: Row[Any], at: dt.datetime) -> bool:
    due = aware(row.due)
    return row.state == schema.QUEUED and row.lease_id is not None and due is not None and due > at


def state_of(row: Row[Any], at: dt.datetime) -> State.ValueType:
    if row.state == schema.QUEUED:
        return State.STATE_RUNNING if is_running(row, at) else State.STATE_QUEUED
    return FINAL_STATES[row.state]


FINAL_STATES: dict[str, State.ValueType] = {
    schema.SUCCEEDED: State.STATE_SUCCEEDED, schema.FAILED: State.STATE_FAILED, schema.CANCELLED: State.STATE_CANCELLED}


def results_of(conn: Connection, job_ids: Sequence[str]) -> dict[str, list[pb.EpochResult]]:
    found: dict[str, list[pb.EpochResult]] = {job_id: [] for job_id in job_ids}
    if not job_ids:
        return found
    r = schema.training_results.c
    rows = conn.execute(sa.select(r.job_id, r.body).where(r.job_id.in_(list(job_ids))).order_by(r.job_id, r.key))
    for row in rows:
        found[row.job_id].append(pb.EpochResult.FromString(row.body))
    return found


def job_message(row: Row[Any], results: list[pb.EpochResult], at: dt.datetime, eta: float = 0.0) -> pb.TrainingJob:
    request = pb.TrainingJob.FromString(row.request)
    message = pb.TrainingJob(
        name=job_name(row.id), display_name=row.display_name, dataset=row.dataset, snapshot=row.snapshot,
        preset=request.preset, basic=request.basic, config=config_message(parse_config(row.config)),
        state=state_of(row, at), queue_position=row.queue_position,
        estimate=pb.TrainingEstimate.FromString(row.estimate), attempt_count=row.claims,
        retrained_from=row.retrained_from, seed=row.seed, eta_seconds=eta,
        family=FAMILY_TO_PROTO[row.family], epochs=results, last_event_seq=row.last_seq,
        oldest_event_seq=min(row.events_pruned_through + 1, row.last_seq),
    )
    if is_running(row, at):
        message.worker = row.worker
    if row.error_status:
        message.error.ParseFromString(row.error_status)
    if row.progress:
        message.progress.ParseFromString(row.progress)
    for name in ("create_time", "start_time", "end_time", "update_time"):
        stamp = timestamp(getattr(row, name))
        if stamp is not None:
            getattr(message, name).CopyFrom(stamp)
    return message


def delete_job_records(conn: Connection, job_id: str) -> None:
    for table in (schema.training_events, schema.training_metrics, schema.training_results):
        conn.execute(table.delete().where(table.c.job_id == job_id))
    g = schema.generations.c
    generation_ids = sa.select(g.id).where(g.job_id == job_id).scalar_subquery()
    conn.execute(schema.generated_images.delete().where(schema.generated_images.c.generation_id.in_(generation_ids)))
    conn.execute(schema.generations.delete().where(g.job_id == job_id))
    conn.execute(schema.training_jobs.delete().where(j.id == job_id))


MODEL_PREFIX = "models/"
VISIBILITY_TO_DB = {1: "private", 2: "tenant", 3: "public"}
VISIBILITY_FROM_DB = {v: k for k, v in VISIBILITY_TO_DB.items()}


def parse_model(name: str, field: str = "name") -> str:
    model_id = name.removeprefix(MODEL_PREFIX)
    if not name.startswith(MODEL_PREFIX) or not model_id or len(model_id) > 32 or not set(model_id) <= _ID_CHARS:
        raise invalid_field(field, "a model's name: models/{id}")
    return model_id


def get_model(conn: Connection, tenant: str, model_id: str) -> Row[Any]:
    """The tenant's model, or any tenant's public one; others are as absent as a missing one."""
    m = schema.models.c
    row = conn.execute(sa.select(schema.models).where(
        m.id == model_id, sa.or_(m.tenant == tenant, m.visibility == "public"))).first()
    if row is None:
        raise not_found(MODEL_PREFIX + model_id, "model")
    return row
