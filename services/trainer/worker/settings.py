"""Worker settings (environment: KILN_TRAINER_ADDRESS, KILN_MODELS_DIR, KILN_S3__ENDPOINT, …)."""

from __future__ import annotations

import os
import pathlib
import socket

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import CommonSettings
from services.trainer.settings import user_cache_models


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class WorkerSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="KILN_", env_nested_delimiter="__", extra="ignore")

    # host:port of the trainer service (required); a name with several records, or several
    # replicas' IP address:port separated by commas, spreads the calls over all of them.
    trainer_address: str = ""
    # Over mutual TLS with several replicas listed: the name their certificate is for.
    trainer_tls_name: str = ""
    # The worker's base-model store (its own copy: a local disk or a volume).
    models_dir: pathlib.Path = Field(default_factory=user_cache_models)
    # The name the trainer service knows this worker by (jobs show it).
    worker_id: str = Field(default_factory=default_worker_id)
    # Families this worker trains ("sd15", "sdxl"); empty: both.
    worker_families: tuple[str, ...] = ()
    # The longest one ClaimTrainingJob waits for a job before asking again.
    claim_wait_seconds: float = Field(default=20.0, gt=0, le=60)
    # The longest the worker stays silent while a job runs (it reports at once when there is news);
    # at most a quarter of the lease, whatever this says.
    heartbeat_seconds: float = Field(default=5.0, gt=0)
    # News waits this long for more before it is reported: events of faster steps go together.
    report_interval_seconds: float = Field(default=0.2, ge=0)
