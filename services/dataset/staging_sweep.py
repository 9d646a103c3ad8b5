"""Staging objects (`uploads/{dataset}/{upload}`) that no upload record points at.

A presigned upload form stays valid after its record is gone: DeleteDataset drops the
dataset's upload records and staging objects, yet a client holding the form can POST
again afterwards (its one object, of its declared size, until the form expires).
Nothing would ever finalize or expire that object, since the record-driven sweep
(sweep_expired_uploads) only visits records, and the orphan sweep only visits
`datasets/`. This sweep removes such objects once they are older than the form's
lifetime, when no form can write them any more (UploadRpcs.sweep_abandoned_staging).
Only keys under `uploads/` are judged: nothing else in the bucket has an upload record,
so anything else would look abandoned.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from services.common import object_keys
from services.dataset import schema


def recorded_staging_keys(conn: Connection) -> set[str]:
    return set(conn.execute(sa.select(schema.uploads.c.object_key)).scalars())


def abandoned(listing: Iterable[tuple[str, dt.datetime]], recorded: set[str], older_than: dt.datetime) -> list[str]:
    return [key for key, modified in listing
            if key.startswith(object_keys.UPLOADS) and modified <= older_than and key not in recorded]
