"""Objects are streamed chunk by chunk through the store's dependency, missing ones refused first."""

from __future__ import annotations

import os
import uuid

import pytest

from services.common.dependencies import Dependency
from services.common.object_streams import ObjectStream
from services.common.objectstore import ObjectNotFound

CHUNK = 64 * 1024


def test_an_object_streams_in_chunks_and_a_missing_one_fails_before_any(aio, store):
    key = f"streams/{uuid.uuid4().hex}"
    data = os.urandom(3 * CHUNK + 17)
    store.put_bytes(key, data)
    objects = Dependency("object store", 30.0)

    async def read(key: str) -> list[bytes]:
        stream = await ObjectStream.open(objects, store, key, CHUNK)
        return [chunk async for chunk in stream]

    chunks = aio.run(read(key))
    assert b"".join(chunks) == data and len(chunks) == 4 and all(len(c) <= CHUNK for c in chunks)
    with pytest.raises(ObjectNotFound):
        aio.run(read(f"{key}-missing"))
