"""Reads and writes of the dataset service's records, inside caller-owned transactions."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from services.common.errors import not_found
from services.dataset import schema
from services.dataset.names import dataset_name

ROLE_TRAINING = "training"
ROLE_REGULARIZATION = "regularization"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class DatasetCounts:
    training: int
    regularization: int
    total_repeated: int


# The statements every upload runs are built once, with bound parameters: building one costs
# more Python than executing it (coercing every column and value anew on each call).
_d, _i = schema.datasets.c, schema.images.c
_DATASET = sa.select(schema.datasets).where(_d.id == sa.bindparam("dataset_id"), _d.tenant == sa.bindparam("tenant"))
# PostgreSQL serialises writers of one dataset here; SQLite already did at BEGIN IMMEDIATE.
_DATASET_LOCKED = _DATASET.with_for_update()
_COUNT_BY_ROLE = sa.select(sa.func.count()).where(_i.dataset_id == sa.bindparam("dataset_id"),
                                                  _i.role == sa.bindparam("role"))
_IMAGE_BY_SHA = sa.select(schema.images).where(_i.dataset_id == sa.bindparam("dataset_id"),
                                               _i.sha256 == sa.bindparam("sha256"))
_IMAGE = sa.select(schema.images).where(_i.dataset_id == sa.bindparam("dataset_id"), _i.id == sa.bindparam("image_id"))
_TOUCH_DATASET = schema.datasets.update().where(_d.id == sa.bindparam("dataset_id")).values(
    update_time=sa.bindparam("touched"))
INSERT_IMAGE = schema.images.insert().returning(*schema.images.c)


def get_dataset(conn: Connection, tenant: str, dataset_id: str, *, lock: bool = False) -> Row[Any]:
    row = conn.execute(_DATASET_LOCKED if lock else _DATASET, {"dataset_id": dataset_id, "tenant": tenant}).first()
    if row is None:
        raise not_found(dataset_name(dataset_id), "dataset")
    return row


def get_dataset_by_id(conn: Connection, dataset_id: str, *, lock: bool = False) -> Row[Any] | None:
    """For background work that acts for no tenant in particular."""
    query = sa.select(schema.datasets).where(schema.datasets.c.id == dataset_id)
    return conn.execute(query.with_for_update() if lock else query).first()


def dataset_counts(conn: Connection, datasets: Sequence[Row[Any]]) -> dict[str, DatasetCounts]:
    """Counts for several datasets in one query (a list page would otherwise ask once per dataset)."""
    if not datasets:
        return {}
    i, d = schema.images.c, schema.datasets.c
    effective = sa.case((i.repeat > 0, i.repeat), else_=d.default_repeat)
    rows = conn.execute(
        sa.select(i.dataset_id, i.role, sa.func.count(), sa.func.coalesce(sa.func.sum(effective), 0))
        .join(schema.datasets, d.id == i.dataset_id)
        .where(i.dataset_id.in_([row.id for row in datasets]))
        .group_by(i.dataset_id, i.role)
    ).all()
    found = {(row[0], row[1]): (int(row[2]), int(row[3])) for row in rows}
    counts = {}
    for dataset in datasets:
        training, repeated = found.get((dataset.id, ROLE_TRAINING), (0, 0))
        counts[dataset.id] = DatasetCounts(training, found.get((dataset.id, ROLE_REGULARIZATION), (0, 0))[0],
                                           repeated)
    return counts


def count_by_role(conn: Connection, dataset_id: str, role: str) -> int:
    return int(conn.execute(_COUNT_BY_ROLE, {"dataset_id": dataset_id, "role": role}).scalar_one())


def image_by_sha(conn: Connection, dataset_id: str, sha256: str) -> Row[Any] | None:
    return conn.execute(_IMAGE_BY_SHA, {"dataset_id": dataset_id, "sha256": sha256}).first()


def get_image(conn: Connection, tenant: str, dataset_id: str, image_id: str) -> Row[Any]:
    get_dataset(conn, tenant, dataset_id)
    return image_of(conn, dataset_id, image_id)


def image_of(conn: Connection, dataset_id: str, image_id: str) -> Row[Any]:
    """For callers that already checked the dataset belongs to the tenant."""
    row = conn.execute(_IMAGE, {"dataset_id": dataset_id, "image_id": image_id}).first()
    if row is None:
        raise not_found(f"datasets/{dataset_id}/images/{image_id}", "image")
    return row


def image_exists(conn: Connection, dataset_id: str, image_id: str) -> bool:
    i = schema.images.c
    return conn.execute(sa.select(i.id).where(i.dataset_id == dataset_id, i.id == image_id)).first() is not None


def images_of(conn: Connection, dataset_id: str, image_ids: Sequence[str] | None = None) -> list[Row[Any]]:
    i = schema.images.c
    query = sa.select(schema.images).where(i.dataset_id == dataset_id)
    if image_ids is not None:
        query = query.where(i.id.in_(list(image_ids)))
    return list(conn.execute(query.order_by(i.create_time, i.id)).all())


def update_image(conn: Connection, image_id: str, **values: Any) -> None:
    conn.execute(schema.images.update().where(schema.images.c.id == image_id).values(update_time=now(), **values))


def touch_dataset(conn: Connection, dataset_id: str) -> None:
    conn.execute(_TOUCH_DATASET, {"dataset_id": dataset_id, "touched": now()})


def retained_keys(conn: Connection, dataset_id: str, keys: Sequence[str]) -> set[str]:
    """The subset of keys some snapshot still reads."""
    if not keys:
        return set()
    s = schema.snapshot_objects.c
    return set(conn.execute(
        sa.select(s.object_key).where(s.dataset_id == dataset_id, s.object_key.in_(list(keys)))
    ).scalars())


def image_object_keys(row: Row[Any]) -> list[str]:
    return [k for k in (row.original_key, row.thumbnail_key, row.crop_key) if k]
