"""Immutable, content-addressed dataset snapshots: what training reads.

The manifest lists every image with its original's object key, crop box and
target size, caption and effective repeat at that moment. Its key is the sha256 of its own
canonical JSON, so the same dataset state always gives the same snapshot,
and the objects it names are retained by the service until the dataset
itself is deleted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Row

from services.dataset.captions import caption_text
from services.dataset.records import ROLE_TRAINING

MANIFEST_KIND = "kiln.dataset.snapshot/v1"


@dataclass(frozen=True)
class Manifest:
    body: bytes
    sha256: str
    object_keys: list[str]
    training_count: int
    regularization_count: int
    total_repeated: int
    blocked_count: int


def build_manifest(dataset: Row[Any], images: Sequence[Row[Any]], blocked_count: int = 0) -> Manifest:
    entries = []
    keys: list[str] = []
    for row in images:
        crop = None
        keys.append(row.original_key)
        if row.crop_key:
            # Training crops the original itself: a box, not a rendered picture.
            crop = {
                "left": row.crop_left, "top": row.crop_top, "width": row.crop_width, "height": row.crop_height,
                "target_width": row.crop_target_width, "target_height": row.crop_target_height,
            }
        entries.append({
            "id": row.id,
            "role": row.role,
            "sha256": row.sha256,
            "object_key": row.original_key,
            "content_type": row.content_type,
            "width": row.width,
            "height": row.height,
            "crop": crop,
            "tags": list(row.tags),
            "caption": caption_text(row.tags),
            # Only an image's own repeat: an image without one takes the training job's repeat when
            # the job sets one, else the dataset's default_repeat below (the engine's order).
            "repeat": row.repeat or None,
        })
    training = [e for e in entries if e["role"] == ROLE_TRAINING]
    document = {
        "kind": MANIFEST_KIND,
        "dataset": f"datasets/{dataset.id}",
        "family": dataset.family,
        "default_repeat": dataset.default_repeat,
        "images": entries,
    }
    body = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return Manifest(
        body=body,
        sha256=hashlib.sha256(body).hexdigest(),
        object_keys=keys,
        training_count=len(training),
        regularization_count=len(entries) - len(training),
        total_repeated=sum(e["repeat"] or dataset.default_repeat for e in training),
        blocked_count=blocked_count,
    )
