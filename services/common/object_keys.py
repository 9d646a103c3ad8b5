"""Every object key Kiln stores, and which service owns which top-level prefix.

All services share one bucket. Each prefix has one owner, the only service that
writes or deletes under it; others may read (the tagger and the training engine
read dataset images). A sweep that deletes what its records don't name must stay
inside its own service's prefixes, or one service's clean-up would destroy
another's data: `owned_by` is the check they apply.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable


class Service(enum.Enum):
    DATASET = "dataset"
    TRAINER = "trainer"


DATASETS = "datasets/"
UPLOADS = "uploads/"
TRAINING_JOBS = "trainingJobs/"
MODELS = "models/"

PREFIX_OWNERS: dict[str, Service] = {
    DATASETS: Service.DATASET,
    UPLOADS: Service.DATASET,
    TRAINING_JOBS: Service.TRAINER,
    MODELS: Service.TRAINER,
}


def owned_prefixes(service: Service) -> tuple[str, ...]:
    return tuple(prefix for prefix, owner in PREFIX_OWNERS.items() if owner is service)


def owner_of(key: str) -> Service | None:
    for prefix, owner in PREFIX_OWNERS.items():
        if key.startswith(prefix):
            return owner
    return None


def owned_by(service: Service, key: str) -> bool:
    return owner_of(key) is service


def only_owned(service: Service, keys: Iterable[str]) -> list[str]:
    return [key for key in keys if owned_by(service, key)]


def _segment(value: str, what: str) -> str:
    # An empty or slashed id would build a key inside another resource's objects.
    if not value or "/" in value:
        raise ValueError(f"{what} {value!r} is not a key segment")
    return value


# datasets/ — the dataset service. Originals never change; crops are keyed by
# what produced them, so a re-crop writes a new object and snapshots keep
# reading the old one.

_ID = r"[a-z0-9]{1,32}"
_DATASET_KEY = re.compile(rf"^datasets/({_ID})/")
_IMAGE_KEY = re.compile(rf"^datasets/({_ID})/images/({_ID})/")
_MANIFEST_KEY = re.compile(rf"^datasets/{_ID}/snapshots/")
_SNAPSHOT_NAME = re.compile(rf"^datasets/({_ID})/snapshots/([0-9a-f]{{64}})$")


def dataset_prefix(dataset_id: str) -> str:
    return f"{DATASETS}{_segment(dataset_id, 'dataset id')}/"


def image_prefix(dataset_id: str, image_id: str) -> str:
    return f"{dataset_prefix(dataset_id)}images/{_segment(image_id, 'image id')}/"


def original_key(dataset_id: str, image_id: str) -> str:
    return image_prefix(dataset_id, image_id) + "original"


def thumbnail_key(dataset_id: str, image_id: str) -> str:
    return image_prefix(dataset_id, image_id) + "thumb.webp"


def crop_key(dataset_id: str, image_id: str, spec_digest: str) -> str:
    return f"{image_prefix(dataset_id, image_id)}crops/{_segment(spec_digest, 'crop digest')}.png"


def snapshot_manifest_key(dataset_id: str, sha256: str) -> str:
    return f"{dataset_prefix(dataset_id)}snapshots/{_segment(sha256, 'snapshot sha256')}.json"


def manifest_key_of(snapshot_name: str) -> str:
    """Where the manifest of `datasets/{d}/snapshots/{sha256}` is stored: clients hold the
    name, and only the services know the key."""
    match = _SNAPSHOT_NAME.match(snapshot_name)
    if match is None:
        raise ValueError(f"{snapshot_name[:200]!r} is not a snapshot name (datasets/{{dataset}}/snapshots/{{sha256}})")
    return snapshot_manifest_key(match.group(1), match.group(2))


def dataset_of(key: str) -> str | None:
    """The dataset id a `datasets/` key belongs to."""
    match = _DATASET_KEY.match(key)
    return match.group(1) if match else None


def image_of(key: str) -> tuple[str, str] | None:
    """(dataset id, image id) of an image's object: its original, thumbnail or a crop."""
    match = _IMAGE_KEY.match(key)
    return (match.group(1), match.group(2)) if match else None


def is_snapshot_manifest(key: str) -> bool:
    return _MANIFEST_KEY.match(key) is not None


# uploads/ — the dataset service: bytes PUT through presigned URLs, until finalized.

def staging_prefix(dataset_id: str) -> str:
    return f"{UPLOADS}{_segment(dataset_id, 'dataset id')}/"


def staging_key(dataset_id: str, upload_id: str) -> str:
    return staging_prefix(dataset_id) + _segment(upload_id, "upload id")


# trainingJobs/ and models/ — the trainer service: a job's checkpoints, LoRA files and
# previews, and published models.

def training_job_prefix(job_id: str) -> str:
    return f"{TRAINING_JOBS}{_segment(job_id, 'training job id')}/"


def model_prefix(model_id: str) -> str:
    return f"{MODELS}{_segment(model_id, 'model id')}/"
