"""Objects no record points at any more, and how to find them.

Writes put bytes first and records second, and deletes remove records first and
bytes second, so a crash between the two steps leaves bytes behind, never a
record without its bytes. This sweep finds those leftovers: objects under
`datasets/` whose dataset, image or snapshot has no record, that no snapshot retains,
and that are older than an upload could still be in flight. Staging objects under
`uploads/` are staging_sweep.py's, and keys under other services' prefixes are
never judged, whatever the listing holds.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from services.common import object_keys
from services.dataset import records, schema


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
        dataset = object_keys.dataset_of(key)
        if dataset is None:  # not under datasets/: another sweep's or another service's
            continue
        if dataset not in datasets:
            found.append(key)
            continue
        image = object_keys.image_of(key)
        # Manifests with a record are in `kept`; one here was written but never recorded.
        if (image is not None and image not in images) or object_keys.is_snapshot_manifest(key):
            found.append(key)
    return found


def cutoff(min_age: dt.timedelta) -> dt.datetime:
    return records.now() - min_age
