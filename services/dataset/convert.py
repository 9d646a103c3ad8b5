"""Records to protobuf messages, and the enum spellings stored in the database."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from google.protobuf import timestamp_pb2
from sqlalchemy.engine import Row

from kiln.v1 import dataset_pb2 as pb
from services.common.database import utc
from services.dataset.records import DatasetCounts
from services.dataset.tagger_client import auto_tags_message, verdict_message

TAGGING_STATES = {"pending": pb.TAGGING_STATE_PENDING, "done": pb.TAGGING_STATE_DONE,
                  "failed": pb.TAGGING_STATE_FAILED, "skipped": pb.TAGGING_STATE_SKIPPED}
MERGE_TO_DB = {pb.CAPTION_MERGE_IGNORE: "ignore", pb.CAPTION_MERGE_APPEND: "append",
               pb.CAPTION_MERGE_OVERWRITE: "overwrite"}
FAMILY_TO_DB = {pb.MODEL_FAMILY_SD15: "sd15", pb.MODEL_FAMILY_SDXL: "sdxl"}
FAMILY_FROM_DB = {v: k for k, v in FAMILY_TO_DB.items()}
ROLE_TO_DB = {pb.IMAGE_ROLE_TRAINING: "training", pb.IMAGE_ROLE_REGULARIZATION: "regularization"}
ROLE_FROM_DB = {v: k for k, v in ROLE_TO_DB.items()}
CROP_MODE_TO_DB = {pb.CROP_MODE_FOCUS: "focus", pb.CROP_MODE_CENTER: "center", pb.CROP_MODE_MANUAL: "manual"}
CROP_MODE_FROM_DB = {v: k for k, v in CROP_MODE_TO_DB.items()}

# Crop sizes per family: square, landscape and portrait at the family's training resolution.
CROP_SIZES: dict[int, tuple[tuple[int, int], ...]] = {
    pb.MODEL_FAMILY_SD15: ((512, 512), (768, 512), (512, 768)),
    pb.MODEL_FAMILY_SDXL: ((1024, 1024), (768, 1024), (1024, 768)),
}


def timestamp(value: dt.datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(utc(value))
    return ts


@dataclass(frozen=True, slots=True)
class SetLimits:
    """How many images each set of a dataset may hold (the service's settings), shown on every
    Dataset so that a client states the limit the uploads are held to."""

    training: int
    regularization: int


def dataset_message(row: Row[Any], counts: DatasetCounts, limits: SetLimits) -> pb.Dataset:
    return pb.Dataset(
        name=f"datasets/{row.id}",
        display_name=row.display_name,
        description=row.description,
        family=FAMILY_FROM_DB[row.family],
        default_repeat=row.default_repeat,
        training_image_count=counts.training,
        regularization_image_count=counts.regularization,
        total_repeated_images=counts.total_repeated,
        create_time=timestamp(row.create_time),
        update_time=timestamp(row.update_time),
        max_training_images=limits.training,
        max_regularization_images=limits.regularization,
    )


def image_message(row: Row[Any], default_repeat: int) -> pb.Image:
    image = pb.Image(
        name=f"datasets/{row.dataset_id}/images/{row.id}",
        role=ROLE_FROM_DB[row.role],
        filename=row.filename,
        content_type=row.content_type,
        sha256=row.sha256,
        upload_sha256=row.upload_sha256 or row.sha256,
        size_bytes=row.size_bytes,
        width=row.width,
        height=row.height,
        tags=list(row.tags),
        repeat=row.repeat,
        effective_repeat=row.repeat or default_repeat,
        warnings=list(row.warnings),
        create_time=timestamp(row.create_time),
        update_time=timestamp(row.update_time),
        auto_tagging=pb.AutoTagging(
            state=TAGGING_STATES.get(row.tagging_state, pb.TAGGING_STATE_UNSPECIFIED), tagger=row.tagger or "",
            tags=auto_tags_message(row.auto_tags), error=row.tagging_error or "", attempts=row.tagging_attempts),
        caption_edited=bool(row.caption_edited),
    )
    verdict = verdict_message(row.screening_verdict, row.screening_findings)
    if verdict is not None:
        image.screening.CopyFrom(verdict)
    if row.crop_key:
        image.crop.CopyFrom(pb.Crop(
            box=pb.CropBox(left=row.crop_left, top=row.crop_top, width=row.crop_width, height=row.crop_height),
            target_width=row.crop_target_width,
            target_height=row.crop_target_height,
            mode=CROP_MODE_FROM_DB[row.crop_mode],
            upscaled=bool(row.crop_upscaled),
        ))
    return image
