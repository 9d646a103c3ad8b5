"""A caller that goes away (client cancel, deadline) while its write commits must never leave a
record without its bytes: the transaction runs on in its thread, so the objects follow its outcome."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa

from kiln.v1 import dataset_pb2 as pb
from services.common import object_keys
from services.common.loop_thread import LoopThread
from services.common.objectstore import ObjectStore
from services.common.settings import ObjectStoreSettings
from services.dataset import names, schema
from services.dataset.settings import DatasetSettings
from tests.dataset.concurrency import (
    BareService,
    FakeContext,
    bare_service,
    pg_dataset_locked,
    sqlite_writer_locked,
    write_began,
)
from tests.dataset.conftest import make_settings
from tests.dataset.helpers import image_bytes, upload_messages
from tests.dataset.upload_form import sent

CONTEXT = FakeContext()


@dataclass
class Database:
    settings: DatasetSettings
    # Holds what a write to the dataset must take first; yields the release.
    locked: Callable[[str], contextlib.AbstractContextManager[Callable[[], None]]]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: pathlib.Path, s3_settings: ObjectStoreSettings) -> Database:
    if request.param == "sqlite":
        settings = make_settings(tmp_path, s3_settings)
        return Database(settings, lambda _: sqlite_writer_locked(tmp_path / "dataset.db"))
    url = request.getfixturevalue("postgres").create_database(f"cancel_{uuid.uuid4().hex[:8]}")
    return Database(make_settings(tmp_path, s3_settings, dataset_database_url=url),
                    lambda dataset_id: pg_dataset_locked(url, dataset_id))


async def _messages(parent: str, data: bytes) -> AsyncIterator[pb.UploadImageRequest]:
    for message in upload_messages(parent, data):
        yield message


async def cancel_while_committing(bare: BareService, call: Coroutine[Any, Any, Any],
                                  release: Callable[[], None]) -> None:
    """Run `call` until its write transaction has started behind the held lock, cancel it there,
    then release the lock and let everything the call left running finish."""
    began = write_began(bare.engine)
    task = asyncio.ensure_future(call)
    assert await asyncio.to_thread(began.wait, 30), "the write transaction never started"
    assert not task.done(), task
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await asyncio.to_thread(release)
    await bare.settle()


def the_one_image(bare: BareService, store: ObjectStore, dataset_id: str, data: bytes) -> str:
    """The id of the dataset's only image, once its record, its bytes and nothing else are stored."""
    with bare.engine.connect() as conn:
        rows = conn.execute(sa.select(schema.images).where(schema.images.c.dataset_id == dataset_id)).all()
    assert len(rows) == 1, rows
    assert store.exists(rows[0].original_key), "a record without its bytes"
    assert store.get_bytes(rows[0].original_key) == data
    assert store.list_keys(object_keys.dataset_prefix(dataset_id)) == [rows[0].original_key]
    return str(rows[0].id)


async def _new_dataset(bare: BareService) -> str:
    dataset = await bare.servicer.CreateDataset(pb.CreateDatasetRequest(dataset=pb.Dataset(
        display_name="cancel", family=pb.MODEL_FAMILY_SD15)), CONTEXT)
    return names.parse_dataset(dataset.name)


def test_upload_cancelled_while_committing_keeps_its_bytes(aio: LoopThread, store: ObjectStore,
                                                           database: Database) -> None:
    data = image_bytes(seed=9001)

    async def scenario() -> None:
        async with bare_service(database.settings, store) as bare:
            dataset_id = await _new_dataset(bare)
            with database.locked(dataset_id) as release:
                await cancel_while_committing(
                    bare, bare.servicer.UploadImage(_messages(names.dataset_name(dataset_id), data), CONTEXT),
                    release)
            # The commit went through once the lock was free: its record and its bytes are both there.
            the_one_image(bare, store, dataset_id, data)

    aio.run(scenario())


def test_finalize_cancelled_while_committing_keeps_its_bytes(aio: LoopThread, store: ObjectStore,
                                                             database: Database) -> None:
    data = image_bytes(seed=9002)

    async def scenario() -> None:
        async with bare_service(database.settings, store) as bare:
            dataset_id = await _new_dataset(bare)
            ticket = await bare.servicer.CreateImageUpload(pb.CreateImageUploadRequest(
                parent=names.dataset_name(dataset_id), role=pb.IMAGE_ROLE_TRAINING, filename="a.png",
                size_bytes=len(data)), CONTEXT)
            await asyncio.to_thread(sent, ticket, data)
            with database.locked(dataset_id) as release:
                await cancel_while_committing(
                    bare, bare.servicer.FinalizeImageUpload(pb.FinalizeImageUploadRequest(name=ticket.name),
                                                            CONTEXT), release)
            image_id = the_one_image(bare, store, dataset_id, data)
            with bare.engine.connect() as conn:
                finalized = conn.execute(sa.select(schema.uploads.c.image_id)).scalar_one()
            assert finalized == image_id

    aio.run(scenario())


def test_delete_cancelled_while_committing_still_removes_the_bytes(aio: LoopThread, store: ObjectStore,
                                                                   database: Database) -> None:
    async def scenario() -> None:
        async with bare_service(database.settings, store) as bare:
            dataset_id = await _new_dataset(bare)
            image = await bare.servicer.UploadImage(
                _messages(names.dataset_name(dataset_id), image_bytes(seed=9003)), CONTEXT)
            with database.locked(dataset_id) as release:
                await cancel_while_committing(
                    bare, bare.servicer.DeleteImage(pb.DeleteImageRequest(name=image.name), CONTEXT), release)
            with bare.engine.connect() as conn:
                assert conn.execute(sa.select(schema.images.c.id)).all() == []
            # Once the record is gone, nothing would ever find its bytes again.
            assert store.list_keys(object_keys.dataset_prefix(dataset_id)) == []

    aio.run(scenario())
