"""The dataset service's tables (SQLAlchemy Core). Migrations live in migrations/."""

from __future__ import annotations

import sqlalchemy as sa

from services.common.idempotency import idempotency_table

metadata = sa.MetaData()
Timestamp = sa.DateTime(timezone=True)
# A tagger's resource name: `taggers/` and an id of up to 63 characters (services/tagger/registry.py),
# with room to spare for longer ids (migration 0003 widened it from 64).
TAGGER_NAME_LENGTH = 128

datasets = sa.Table(
    "datasets",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False, index=True),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("family", sa.String(8), nullable=False),
    sa.Column("default_repeat", sa.Integer, nullable=False),
    sa.Column("create_time", Timestamp, nullable=False),
    sa.Column("update_time", Timestamp, nullable=False),
)

images = sa.Table(
    "images",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("dataset_id", sa.String(32), sa.ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("filename", sa.String(255), nullable=False),
    sa.Column("content_type", sa.String(32), nullable=False),
    # Of the stored original; `upload_sha256` is of the bytes as uploaded (migration 0005).
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("upload_sha256", sa.String(64), nullable=True),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("original_key", sa.String(512), nullable=False),
    sa.Column("thumbnail_key", sa.String(512), nullable=False),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("repeat", sa.Integer, nullable=False),
    sa.Column("warnings", sa.JSON, nullable=False),
    sa.Column("crop_left", sa.Integer),
    sa.Column("crop_top", sa.Integer),
    sa.Column("crop_width", sa.Integer),
    sa.Column("crop_height", sa.Integer),
    sa.Column("crop_target_width", sa.Integer),
    sa.Column("crop_target_height", sa.Integer),
    sa.Column("crop_mode", sa.String(8)),
    sa.Column("crop_upscaled", sa.Boolean),
    sa.Column("crop_key", sa.String(512)),
    sa.Column("create_time", Timestamp, nullable=False),
    sa.Column("update_time", Timestamp, nullable=False),
    # Background tagging and screening (migration 0002).
    # pending -> done | failed; `tagging_due` is when a worker may take it next: a claim
    # pushes it one lease ahead (a crashed worker's claim simply expires), a failure
    # pushes it by the retry backoff.
    sa.Column("tagging_state", sa.String(8), nullable=False, server_default="pending"),
    sa.Column("tagging_due", Timestamp),
    sa.Column("tagging_attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("tagging_error", sa.Text),
    # When the current lease was taken (migration 0004): how long a claim has been held.
    sa.Column("tagging_claimed_at", Timestamp),
    # {"tagger": name, "options": {...}, "merge": "auto"|"ignore"|"append"|"overwrite"}; null: upload defaults
    sa.Column("tagging_request", sa.JSON),
    sa.Column("tagger", sa.String(TAGGER_NAME_LENGTH)),
    sa.Column("auto_tags", sa.JSON),
    # The caption was set or edited by a person: background tagging never replaces it.
    sa.Column("caption_edited", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("screening_verdict", sa.String(8)),
    sa.Column("screening_findings", sa.JSON),
    # Identical bytes never become a second image of the same dataset.
    sa.UniqueConstraint("dataset_id", "sha256", name="uq_images_dataset_sha256"),
    sa.Index("ix_images_dataset_role_created", "dataset_id", "role", "create_time", "id"),
    sa.Index("ix_images_tagging_due", "tagging_state", "tagging_due"),
)

uploads = sa.Table(
    "uploads",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("dataset_id", sa.String(32), sa.ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("filename", sa.String(255), nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("repeat", sa.Integer, nullable=False),
    sa.Column("object_key", sa.String(512), nullable=False),
    # Set once finalized, so a repeated finalize answers with the same image.
    sa.Column("image_id", sa.String(32)),
    sa.Column("expire_time", Timestamp, nullable=False),
    sa.Column("create_time", Timestamp, nullable=False),
)

snapshots = sa.Table(
    "snapshots",
    metadata,
    sa.Column("dataset_id", sa.String(32), sa.ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("manifest_key", sa.String(512), nullable=False),
    sa.Column("training_image_count", sa.Integer, nullable=False),
    sa.Column("regularization_image_count", sa.Integer, nullable=False),
    sa.Column("total_repeated_images", sa.BigInteger, nullable=False),
    sa.Column("create_time", Timestamp, nullable=False),
    sa.Column("blocked_image_count", sa.Integer, nullable=False, server_default="0"),
)

# Objects a snapshot reads: deleting or re-cropping an image keeps these.
snapshot_objects = sa.Table(
    "snapshot_objects",
    metadata,
    sa.Column("dataset_id", sa.String(32), primary_key=True),
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("object_key", sa.String(512), primary_key=True),
    sa.ForeignKeyConstraint(["dataset_id", "sha256"], ["snapshots.dataset_id", "snapshots.sha256"],
                            ondelete="CASCADE"),
    sa.Index("ix_snapshot_objects_key", "object_key"),
)

request_ids = idempotency_table(metadata, "dataset_request_ids")
