"""What a webhook tells: the event types, and the thin JSON payload of each (Standard Webhooks:
`{"type", "timestamp", "data"}`, the data naming the resource, never carrying it whole)."""

from __future__ import annotations

import datetime as dt
import json
import secrets
from typing import Any

from kiln.v1 import trainer_pb2 as pb

TRAINING_QUEUED = "training.queued"
TRAINING_STARTED = "training.started"
TRAINING_EPOCH_SAVED = "training.epoch_saved"
TRAINING_SUCCEEDED = "training.succeeded"
TRAINING_FAILED = "training.failed"
TRAINING_CANCELLED = "training.cancelled"
MODEL_PUBLISHED = "model.published"
# Sent only by SendTestWebhook, whatever the endpoint subscribed to.
TEST = "webhook.test"

EVENT_TYPES = (TRAINING_QUEUED, TRAINING_STARTED, TRAINING_EPOCH_SAVED, TRAINING_SUCCEEDED, TRAINING_FAILED,
               TRAINING_CANCELLED, MODEL_PUBLISHED)
_FINISHED = {pb.TrainingJob.State.STATE_SUCCEEDED: TRAINING_SUCCEEDED, pb.TrainingJob.State.STATE_FAILED:
             TRAINING_FAILED, pb.TrainingJob.State.STATE_CANCELLED: TRAINING_CANCELLED}


def new_event_id() -> str:
    """The `webhook-id` of an event: the same on each of its endpoints' deliveries and every retry."""
    return "evt_" + secrets.token_hex(12)


def state_name(state: pb.TrainingJob.State.ValueType) -> str:
    return pb.TrainingJob.State.Name(state).removeprefix("STATE_")


def payload(event_type: str, at: dt.datetime, data: dict[str, Any]) -> str:
    """The body sent, compact JSON; `timestamp` is when the event happened (RFC 3339, UTC)."""
    stamp = at.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json.dumps({"type": event_type, "timestamp": stamp, "data": data}, separators=(",", ":"))


def training_event(job_name: str, event: pb.TrainingEvent) -> tuple[str, dict[str, Any]] | None:
    """The webhook a job's logged event makes, if any: (type, data)."""
    kind = event.WhichOneof("kind")
    if kind == "started":
        return TRAINING_STARTED, {"name": job_name, "state": "RUNNING", "attempt": event.started.attempt}
    if kind == "epoch_saved":
        saved = event.epoch_saved
        data: dict[str, Any] = {"name": job_name, "state": "RUNNING", "epoch": saved.epoch, "step": saved.step}
        if saved.on_request:
            data["on_request"] = True
        return TRAINING_EPOCH_SAVED, data
    if kind == "finished":
        finished = event.finished
        event_type = _FINISHED.get(finished.state)
        if event_type is None:
            return None
        data = {"name": job_name, "state": state_name(finished.state)}
        if finished.HasField("error") and finished.error.message:
            data["error"] = finished.error.message
        return event_type, data
    return None


def queued(job_name: str) -> tuple[str, dict[str, Any]]:
    return TRAINING_QUEUED, {"name": job_name, "state": "QUEUED"}


def published(model_name: str, job_name: str, epoch: int) -> tuple[str, dict[str, Any]]:
    return MODEL_PUBLISHED, {"name": model_name, "training_job": job_name, "epoch": epoch}
