"""Immutable, content-addressed dataset snapshots: what training reads.

The manifest is a `kiln.v1.SnapshotManifest` (protos/kiln/v1/snapshot_manifest.proto): every
image with its original's object key, crop box and target size, caption and own repeat at that
moment. It is stored as canonical proto JSON, and its sha256 is the snapshot's id, so the same
dataset state always gives the same snapshot. The objects it names are retained by the service
until the dataset itself is deleted.

Why JSON and not binary: the bytes must be the same for the same message every time, or one state
would give many snapshots. The protobuf library promises stable binary output only within one
build of itself; the JSON here is fixed by its own rules (proto field names, sorted keys, no
whitespace, defaults left out), and people and `jq` can read it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from sqlalchemy.engine import Row

from kiln.v1 import dataset_pb2 as pb
from kiln.v1 import snapshot_manifest_pb2 as mpb
from services.dataset.captions import caption_text
from services.dataset.convert import FAMILY_FROM_DB, ROLE_FROM_DB
from services.dataset.names import dataset_name
from services.dataset.records import ROLE_TRAINING


@dataclass(frozen=True)
class Manifest:
    body: bytes
    sha256: str
    object_keys: list[str]
    training_count: int
    regularization_count: int
    total_repeated: int
    blocked_count: int


def canonical_json(manifest: mpb.SnapshotManifest) -> bytes:
    document = json_format.MessageToDict(manifest, preserving_proto_field_name=True)
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def build_manifest(dataset: Row[Any], images: Sequence[Row[Any]], blocked_count: int = 0) -> Manifest:
    manifest = mpb.SnapshotManifest(
        dataset=dataset_name(dataset.id),
        family=FAMILY_FROM_DB[dataset.family],
        default_repeat=dataset.default_repeat,
        images=[_entry(row) for row in images],
    )
    body = canonical_json(manifest)
    training = [row for row in images if row.role == ROLE_TRAINING]
    return Manifest(
        body=body,
        sha256=hashlib.sha256(body).hexdigest(),
        object_keys=[row.original_key for row in images],
        training_count=len(training),
        regularization_count=len(images) - len(training),
        total_repeated=sum(row.repeat or dataset.default_repeat for row in training),
        blocked_count=blocked_count,
    )


def _entry(row: Row[Any]) -> mpb.ManifestImage:
    entry = mpb.ManifestImage(
        id=row.id, role=ROLE_FROM_DB[row.role], sha256=row.sha256, object_key=row.original_key,
        content_type=row.content_type, width=row.width, height=row.height, tags=list(row.tags),
        caption=caption_text(row.tags),
    )
    if row.repeat:
        # Only an image's own repeat: an image without one takes the training job's repeat when
        # the job sets one, else the manifest's default_repeat (the engine's order).
        entry.repeat = row.repeat
    if row.crop_key:
        # Training crops the original itself: a box, not a rendered picture.
        entry.crop.CopyFrom(mpb.ManifestCrop(
            box=pb.CropBox(left=row.crop_left, top=row.crop_top, width=row.crop_width, height=row.crop_height),
            target_width=row.crop_target_width, target_height=row.crop_target_height,
        ))
    return entry
