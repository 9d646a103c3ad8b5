"""Dataset-service settings (environment: KILN_DATASET_…, shared ones KILN_…)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import CommonSettings


class DatasetSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="KILN_", env_nested_delimiter="__", extra="ignore")

    # Default: a SQLite file under data_dir. PostgreSQL: postgresql://user:pass@host/db
    dataset_database_url: str = ""
    # At most 1000 training images per training unless configured otherwise.
    max_training_images: int = Field(default=1000, ge=1)
    # Per dataset, of regularization images.
    max_regularization_images: int = Field(default=1000, ge=0)
    # The largest image file an upload may be.
    max_upload_bytes: int = Field(default=50 * 1024 * 1024, ge=1)
    # Decompression bombs: a small file may declare a huge canvas.
    max_image_pixels: int = Field(default=64_000_000, ge=1)
    # The shortest side an image may have, in pixels.
    min_image_side: int = Field(default=64, ge=1)
    # How long a browser upload form (CreateImageUpload) may be used. Its holder may send its one
    # object again and again until then, so minutes: enough to send 50 MiB over a slow line.
    upload_url_ttl_seconds: int = Field(default=900, ge=1, le=24 * 3600)
    # Threads for decode/crop work, off the event loop.
    image_workers: int = Field(default=2, ge=1)
    # Use the people/face detector to steer focus crops.
    crop_use_detector: bool = True
    # host:port of the tagger service. Empty: images are not tagged or screened
    # (their tagging state says SKIPPED) and snapshots don't wait for screening.
    tagger_address: str = ""
    # Images per call to the tagger, and calls an image gets before its tagging fails.
    tagging_batch_size: int = Field(default=8, ge=1, le=32)
    tagging_max_attempts: int = Field(default=5, ge=1)
    # The sweeps run at start-up, taking what a crash left, and then this often. An object no
    # record points at is taken once older than `orphan_min_age_seconds`: younger ones may
    # belong to a write still in flight (the longest a write may take is the database's and the
    # object store's ceilings together, well under the default).
    sweep_interval_seconds: float = Field(default=600, gt=0)
    orphan_min_age_seconds: float = Field(default=900, ge=0)
    # How often the work queue's depth and lease age are sampled for the metrics.
    metrics_interval_seconds: float = Field(default=15, gt=0)

    def database_url(self) -> str:
        return self.dataset_database_url or f"sqlite:///{self.data_dir / 'dataset.db'}"
