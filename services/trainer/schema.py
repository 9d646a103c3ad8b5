"""The trainer service's tables (SQLAlchemy Core). Migrations live in migrations/.

The job table is the training queue (services/common/work_queue.py): `state` is `queued`
while a job waits or runs. Running is a live lease: a `lease_id` (what the worker names in
every call, the fence of its writes) whose `due` has not passed. A lost worker's lease runs
out and the job waits again, at the head of its tenant's queue (`enqueue_time` is kept).
"""

from __future__ import annotations

import sqlalchemy as sa

from services.common.idempotency import idempotency_table

metadata = sa.MetaData()
Timestamp = sa.DateTime(timezone=True)

QUEUED, SUCCEEDED, FAILED, CANCELLED = "queued", "succeeded", "failed", "cancelled"

training_jobs = sa.Table(
    "training_jobs",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False, index=True),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("dataset", sa.String(128), nullable=False),
    sa.Column("snapshot", sa.String(200), nullable=False),
    sa.Column("family", sa.String(8), nullable=False),
    sa.Column("base_model", sa.String(64), nullable=False),
    sa.Column("preset", sa.String(64), nullable=False),
    # What the client asked for (preset, basic and pro-mode fields), kept for retraining.
    sa.Column("request", sa.LargeBinary, nullable=False),
    # The engine's configuration, every default resolved (JSON).
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("estimate", sa.LargeBinary, nullable=False),
    sa.Column("gpu_seconds", sa.Float, nullable=False),
    sa.Column("memory_bytes", sa.BigInteger, nullable=False),
    # The kind of device a worker must train it on: "" any, "cuda", "mps" (estimates.required_device).
    sa.Column("device", sa.String(8), nullable=False, server_default=""),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("error_status", sa.LargeBinary),
    # Leased-queue bookkeeping.
    sa.Column("due", Timestamp),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("claimed_at", Timestamp),
    sa.Column("enqueue_time", Timestamp, nullable=False),
    sa.Column("lease_id", sa.String(32)),
    sa.Column("worker", sa.String(128), nullable=False, server_default=""),
    # Runs started (claims); a job whose workers keep vanishing fails after max_attempts.
    sa.Column("claims", sa.Integer, nullable=False, server_default="0"),
    # Reports of the current lease recorded so far (WorkerEvent.index), so a resent one is ignored.
    sa.Column("report_index", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("pending_controls", sa.JSON, nullable=False),
    sa.Column("queue_position", sa.Integer, nullable=False, server_default="0"),
    sa.Column("progress", sa.LargeBinary),
    sa.Column("last_saved_epoch", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_seq", sa.BigInteger, nullable=False, server_default="0"),
    # Events up to this seq were pruned from the log (services/trainer/event_log.py).
    sa.Column("events_pruned_through", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("retrained_from", sa.String(64), nullable=False, server_default=""),
    sa.Column("create_time", Timestamp, nullable=False),
    sa.Column("start_time", Timestamp),
    sa.Column("end_time", Timestamp),
    sa.Column("update_time", Timestamp, nullable=False),
    sa.Index("ix_training_jobs_queue", "state", "due"),
    # Unique while held: a claim retried under its id can never end up holding two jobs.
    sa.UniqueConstraint("lease_id", name="uq_training_jobs_lease_id"),
)

# The event log WatchTrainingJob reads: one row per TrainingEvent, seq 1, 2, 3 ... per job.
training_events = sa.Table(
    "training_events",
    metadata,
    sa.Column("job_id", sa.String(32), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True),
    sa.Column("body", sa.LargeBinary, nullable=False),
)

# Per-step loss and learning rates, for charts (ListTrainingMetrics).
training_metrics = sa.Table(
    "training_metrics",
    metadata,
    sa.Column("job_id", sa.String(32), primary_key=True),
    sa.Column("step", sa.BigInteger, primary_key=True),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("loss", sa.Float, nullable=False),
    sa.Column("smoothed_loss", sa.Float, nullable=False),
    sa.Column("learning_rates", sa.JSON, nullable=False),
)

# What each saved epoch (or on-request save) left: an EpochResult message.
training_results = sa.Table(
    "training_results",
    metadata,
    sa.Column("job_id", sa.String(32), primary_key=True),
    # "e{epoch:06d}" for an epoch, "s{step:012d}" for a save asked for by a user.
    sa.Column("key", sa.String(16), primary_key=True),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
)

# Workers seen recently (for ETAs: how many run in parallel).
training_workers = sa.Table(
    "training_workers",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("capabilities", sa.LargeBinary, nullable=False),
    sa.Column("last_seen", Timestamp, nullable=False),
)

# Published models (migration 0002): one saved epoch of a job, with its publish metadata.
models = sa.Table(
    "models",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("trigger_words", sa.JSON, nullable=False),
    sa.Column("visibility", sa.String(8), nullable=False),
    sa.Column("job_id", sa.String(32), nullable=False),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("base_model", sa.String(64), nullable=False),
    sa.Column("family", sa.String(8), nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    # Preview indexes copied as showcase images (models/{id}/images/{k}.png).
    sa.Column("showcase", sa.JSON, nullable=False),
    sa.Column("create_time", Timestamp, nullable=False),
    sa.UniqueConstraint("tenant", "display_name", name="uq_models_tenant_display_name"),
    sa.Index("ix_models_visibility", "visibility"),
)

# Test generations (migration 0003): a second leased queue, claimed ahead of waiting trainings.
generations = sa.Table(
    "generations",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("job_id", sa.String(32), nullable=False, index=True),
    # The request_id, or the generation's own id when it came without one.
    sa.Column("request_key", sa.String(128), nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    # A GenerationAssignment without its lease.
    sa.Column("assignment", sa.LargeBinary, nullable=False),
    sa.Column("family", sa.String(8), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("due", Timestamp),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error", sa.Text),
    sa.Column("error_status", sa.LargeBinary),
    sa.Column("claimed_at", Timestamp),
    sa.Column("lease_id", sa.String(32)),
    sa.Column("worker", sa.String(128), nullable=False, server_default=""),
    sa.Column("claims", sa.Integer, nullable=False, server_default="0"),
    sa.Column("sheet", sa.LargeBinary),
    sa.Column("images", sa.Integer, nullable=False, server_default="0"),
    sa.Column("create_time", Timestamp, nullable=False),
    sa.Column("update_time", Timestamp, nullable=False),
    sa.UniqueConstraint("tenant", "request_key", name="uq_generations_tenant_request_key"),
    sa.Index("ix_generations_queue", "state", "due"),
    sa.UniqueConstraint("lease_id", name="uq_generations_lease_id"),
)

# The images of a generation as they were reported: GeneratedImage messages, in order.
generated_images = sa.Table(
    "generated_images",
    metadata,
    sa.Column("generation_id", sa.String(32), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("body", sa.LargeBinary, nullable=False),
)

request_ids = idempotency_table(metadata, "trainer_request_ids")

# Webhooks (migration 0005, services/trainer/webhooks/): a tenant's endpoints, their signing
# secrets, and the outbox of deliveries, written in the transaction of the event they tell of.
webhook_endpoints = sa.Table(
    "webhook_endpoints",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False, index=True),
    sa.Column("url", sa.String(2048), nullable=False),
    sa.Column("event_types", sa.JSON, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("disabled_reason", sa.Text, nullable=False, server_default=""),
    sa.Column("disable_time", Timestamp),
    sa.Column("last_success_time", Timestamp),
    sa.Column("create_time", Timestamp, nullable=False),
    sa.Column("update_time", Timestamp, nullable=False),
)

# Signing secrets (`whsec_…`): the current one has no expiry; a rotated-out one signs beside it
# until `expire_time`.
webhook_secrets = sa.Table(
    "webhook_secrets",
    metadata,
    sa.Column("endpoint_id", sa.String(32), primary_key=True),
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("secret", sa.String(128), nullable=False),
    sa.Column("create_time", Timestamp, nullable=False),
    sa.Column("expire_time", Timestamp),
)

# The outbox: one row per (event, endpoint), a leased queue (services/common/work_queue.py) the
# dispatcher claims from; `event_id` is the webhook-id every attempt carries.
webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("endpoint_id", sa.String(32), nullable=False),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("event_id", sa.String(64), nullable=False),
    sa.Column("event_type", sa.String(64), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("due", Timestamp),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("claimed_at", Timestamp),
    sa.Column("error", sa.Text),
    sa.Column("status_code", sa.Integer, nullable=False, server_default="0"),
    sa.Column("latency_ms", sa.Float, nullable=False, server_default="0"),
    sa.Column("last_attempt_time", Timestamp),
    sa.Column("create_time", Timestamp, nullable=False),
    sa.UniqueConstraint("endpoint_id", "event_id", name="uq_webhook_deliveries_endpoint_event"),
    sa.Index("ix_webhook_deliveries_queue", "state", "due"),
    sa.Index("ix_webhook_deliveries_endpoint", "endpoint_id", "create_time"),
)
