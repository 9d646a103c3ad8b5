"""Resource names (`datasets/{d}`, `datasets/{d}/images/{i}`, …) as clients send them.

Object keys are services/common/object_keys.py's.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from services.common.errors import invalid_field

_ID = r"[a-z0-9]{1,32}"
_DATASET = re.compile(rf"^datasets/({_ID})$")
_IMAGE = re.compile(rf"^datasets/({_ID})/images/({_ID})$")
_UPLOAD = re.compile(rf"^datasets/({_ID})/uploads/({_ID})$")
_SNAPSHOT = re.compile(rf"^datasets/({_ID})/snapshots/([0-9a-f]{{64}})$")
# The tagger service's names (services/tagger/registry.py NAME_PATTERN), checked
# here too so a request never stores a name the tagger could not have.
_TAGGER = re.compile(r"^taggers/([a-z0-9][a-z0-9._-]{0,62})$")


def new_id() -> str:
    return secrets.token_hex(8)


@dataclass(frozen=True)
class ImageName:
    dataset_id: str
    image_id: str

    def __str__(self) -> str:
        return f"datasets/{self.dataset_id}/images/{self.image_id}"


def _match(pattern: re.Pattern[str], value: str, field: str, shape: str) -> re.Match[str]:
    match = pattern.match(value)
    if not match:
        if not value:
            raise invalid_field(field, f"required; expected {shape}")
        raise invalid_field(field, f"{value[:200]!r} is not a valid name; expected {shape}")
    return match


def parse_dataset(value: str, field: str = "name") -> str:
    return _match(_DATASET, value, field, "datasets/{dataset}").group(1)


def parse_image(value: str, field: str = "name") -> ImageName:
    m = _match(_IMAGE, value, field, "datasets/{dataset}/images/{image}")
    return ImageName(m.group(1), m.group(2))


def parse_upload(value: str, field: str = "name") -> tuple[str, str]:
    m = _match(_UPLOAD, value, field, "datasets/{dataset}/uploads/{upload}")
    return m.group(1), m.group(2)


def parse_snapshot(value: str, field: str = "name") -> tuple[str, str]:
    m = _match(_SNAPSHOT, value, field, "datasets/{dataset}/snapshots/{sha256}")
    return m.group(1), m.group(2)


def check_tagger(value: str, field: str = "tagger") -> None:
    _match(_TAGGER, value, field, "taggers/{tagger}")


def dataset_name(dataset_id: str) -> str:
    return f"datasets/{dataset_id}"


def snapshot_name(dataset_id: str, sha256: str) -> str:
    return f"datasets/{dataset_id}/snapshots/{sha256}"


def upload_name(dataset_id: str, upload_id: str) -> str:
    return f"datasets/{dataset_id}/uploads/{upload_id}"
