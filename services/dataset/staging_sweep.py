"""Staging objects (`uploads/{dataset}/{upload}`) that no upload record points at.

A presigned PUT URL stays valid after its record is gone: DeleteDataset drops the
dataset's upload records and staging objects, yet a client holding the URL can PUT
again afterwards. Nothing would ever finalize or expire that object, since the
record-driven sweep (sweep_expired_uploads) only visits records, and the orphan sweep
only visits `datasets/`. This sweep removes such objects once they are older than the
URL lifetime, when no URL can write them any more.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from services.common.objectstore import ObjectStore
from services.dataset import schema
from services.dataset.orphans import cutoff

STAGING_PREFIX = "uploads/"

ReadDb = Callable[[Callable[[Connection], set[str]]], Awaitable[set[str]]]


def recorded_staging_keys(conn: Connection) -> set[str]:
    return set(conn.execute(sa.select(schema.uploads.c.object_key)).scalars())


def abandoned(listing: Iterable[tuple[str, dt.datetime]], recorded: set[str], older_than: dt.datetime) -> list[str]:
    return [key for key, modified in listing if modified <= older_than and key not in recorded]


async def sweep_abandoned_staging(store: ObjectStore, read_db: ReadDb, min_age: dt.timedelta) -> int:
    """Delete staging objects without an upload record that are older than min_age; how many."""
    # Listed before the records are read. An object exists only after its URL was handed out,
    # which is after its record was committed, so a record missing now is gone for good.
    listing = await asyncio.to_thread(store.list_with_times, STAGING_PREFIX)
    recorded = await read_db(recorded_staging_keys)
    doomed = abandoned(listing, recorded, cutoff(min_age))
    if doomed:
        await asyncio.to_thread(store.delete_many, doomed)
    return len(doomed)
