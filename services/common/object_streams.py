"""An object's bytes streamed to a caller chunk by chunk, never held whole in memory: each read
runs through the store's dependency (its own thread and ceiling), so a slow store can't stall
the event loop and a large file costs one chunk of memory per reader."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Generator

from services.common.dependencies import Dependency
from services.common.objectstore import ObjectStore


class ObjectStream:
    def __init__(self, chunks: Generator[bytes, None, None], first: bytes | None, objects: Dependency) -> None:
        self._chunks = chunks
        self._first = first
        self._objects = objects

    @classmethod
    async def open(cls, objects: Dependency, store: ObjectStore, key: str, chunk_size: int) -> ObjectStream:
        """Starts the read: a missing object raises ObjectNotFound here, before a caller has sent
        anything of its answer."""
        chunks = store.iter_chunks(key, chunk_size)
        try:
            first = await objects.run(next, chunks, None, operation="get")
        except BaseException:
            chunks.close()
            raise
        return cls(chunks, first, objects)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            chunk = self._first
            while chunk is not None:
                yield chunk
                chunk = await self._objects.run(next, self._chunks, None, operation="get")
        finally:
            # Gives the connection back, also when the caller went away. A read the ceiling gave
            # up on may still run in its thread: that generator can't be closed from here and
            # goes (with its connection) when it is collected.
            with contextlib.suppress(ValueError):
                self._chunks.close()
