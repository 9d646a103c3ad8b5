"""Trainer-service settings (environment: KILN_…, e.g. KILN_TRAINER_DATABASE_URL,
KILN_DATASET_ADDRESS, KILN_TRAINING_LEASE_SECONDS)."""

from __future__ import annotations

import pathlib

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.trainer.settings import user_cache_models
from services.trainer.webhooks.settings import WebhookSettings


class TrainerServiceSettings(WebhookSettings):
    model_config = SettingsConfigDict(env_prefix="KILN_", env_nested_delimiter="__", extra="ignore")

    # Default: a SQLite file under data_dir. PostgreSQL: postgresql://user:pass@host/db
    trainer_database_url: str = ""
    # The base-model store validation checks weights against (workers read their own copy).
    models_dir: pathlib.Path = Field(default_factory=user_cache_models)
    # host:port of the dataset service, which snapshots a dataset when a job names one.
    dataset_address: str = ""
    # A worker renews its lease with every report; one silent for this long has lost its job.
    training_lease_seconds: float = Field(default=30.0, gt=0)
    # Runs a job may start (lost workers and retryable failures count) before it fails.
    training_max_attempts: int = Field(default=3, ge=1)
    # Per tenant: jobs waiting, jobs running at once, test generations waiting or running.
    max_queued_jobs_per_tenant: int = Field(default=20, ge=1)
    max_running_jobs_per_tenant: int = Field(default=2, ge=1)
    max_queued_generations_per_tenant: int = Field(default=4, ge=1)
    # Watchers of a job served by another replica than its worker's see new events this often.
    watch_poll_seconds: float = Field(default=1.0, gt=0)
    # How often leases are checked and queue metrics sampled.
    queue_maintenance_seconds: float = Field(default=2.0, gt=0)
    # Workers seen within this long count towards queue ETAs.
    worker_seen_seconds: float = Field(default=120.0, gt=0)
    # The longest a worker's ClaimTrainingJob may wait for a job.
    max_claim_wait_seconds: float = Field(default=30.0, gt=0)
    # Each job's event log keeps at least its latest this many events (a step is one); older
    # seqs answer OUT_OF_RANGE. The job, its per-epoch results and its metrics are kept whole.
    events_kept_per_job: int = Field(default=20_000, ge=10)
    # How long a presigned artifact URL (GetArtifactUrl) stays valid.
    artifact_url_ttl_seconds: int = Field(default=3600, ge=60, le=7 * 24 * 3600)

    def database_url(self) -> str:
        return self.trainer_database_url or f"sqlite:///{self.data_dir / 'trainer.db'}"
