"""Objects no record points at any more, and how to find them.

Writes put bytes first and records second, and deletes remove records first and
bytes second, so a crash between the two steps leaves bytes behind, never a
record without its bytes. This sweep finds those leftovers: objects under
`datasets/` whose dataset, image or snapshot has no record, that no snapshot retains,
and that are older than an upload could still be in flight. Staging objects under
`uploads/` are staging_sweep.py's.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from services.dataset import records, schema

_IMAGE_KEY = re.compile(r"^datasets/([a-z0-9]{1,32})/images/([a-z0-9]{1,32})/")
_DATASET_KEY = re.compile(r"^datasets/([a-z0-9]{1,32})/")
_SNAPSHOT_KEY = re.compile(r"^datasets/[a-z0-9]{1,32}/snapshots/")


def known_objects(conn: Connection) -> tuple[set[str], set[tuple[str, str]], set[str]]:
    """Dataset ids, (dataset, image) ids, and keys that must stay (snapshot manifests and the
    objects they retain), as of one transaction."""
    datasets = set(conn.execute(sa.select(schema.datasets.c.id)).scalars())
    images = {(r.dataset_id, r.id) for r in conn.execute(sa.select(schema.images.c.dataset_id, schema.images.c.id))}
    kept = set(conn.execute(sa.select(schema.snapshot_objects.c.object_key)).scalars())
    kept |= set(conn.execute(sa.select(schema.snapshots.c.manifest_key)).scalars())
    return datasets, images, kept


def orphans(listing: Iterable[tuple[str, dt.datetime]], datasets: set[str], images: set[tuple[str, str]],
            kept: set[str], older_than: dt.datetime) -> list[str]:
    found = []
    for key, modified in listing:
        if modified > older_than or key in kept:
            continue
        dataset = _DATASET_KEY.match(key)
        if dataset is None:
            continue
        if dataset.group(1) not in datasets:
            found.append(key)
            continue
        image = _IMAGE_KEY.match(key)
        missing_image = image is not None and (image.group(1), image.group(2)) not in images
        # Manifests with a record are in `kept`; one here was written but never recorded.
        if missing_image or _SNAPSHOT_KEY.match(key):
            found.append(key)
    return found


def cutoff(min_age: dt.timedelta) -> dt.datetime:
    return records.now() - min_age
