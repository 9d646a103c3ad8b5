"""What every group of DatasetService handlers shares: the thread pools, one-transaction
SQL with idempotent request ids, object-store cleanup and message building.

Blocking work never runs on the event loop: SQL in a small pool of its own, decoding and
cropping in the image pool, object-store calls in the default pool. Every write transaction
locks its dataset row first, so writers of one dataset are serialised on SQLite and
PostgreSQL alike."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
import sqlalchemy as sa
from google.protobuf.message import Message
from sqlalchemy.engine import Connection, Engine, Row

from kiln.v1 import dataset_pb2 as pb
from services.common.database import READ_ONLY
from services.common.idempotency import IdempotencyKeys, ResponseT, check_request_id, request_fingerprint
from services.common.objectstore import ObjectStore
from services.common.tenancy import tenant_of
from services.dataset import records, schema
from services.dataset.autotag import TaggingWorker
from services.dataset.convert import (
    dataset_message,
    image_message,
)
from services.dataset.cropping import Detector
from services.dataset.image_check import ImageLimits
from services.dataset.settings import DatasetSettings

log = logging.getLogger(__name__)
T = TypeVar("T")


class ServicerBase:
    def __init__(self, engine: Engine, store: ObjectStore, settings: DatasetSettings,
                 detector: Detector | None, tagging: TaggingWorker | None = None) -> None:
        self._engine = engine
        self.tagging = tagging
        self._store = store
        self._settings = settings
        self._detector = detector
        self._keys = IdempotencyKeys(schema.request_ids)
        self._db_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="dataset-db")
        self._image_pool = ThreadPoolExecutor(max_workers=settings.image_workers, thread_name_prefix="dataset-img")
        self._limits = ImageLimits(settings.max_upload_bytes, settings.max_image_pixels, settings.min_image_side)
        # Clean-ups outlive the requests that started them; held here so they aren't collected mid-way.
        self._cleanups: set[asyncio.Task[None]] = set()

    def close(self) -> None:
        self._db_pool.shutdown(wait=False, cancel_futures=True)
        self._image_pool.shutdown(wait=False, cancel_futures=True)

    async def run_db(self, work: Callable[[Connection], T]) -> T:
        """Run `work` in one transaction on the SQL thread pool (for the background workers too)."""
        return await self._db(work)

    async def _db(self, work: Callable[[Connection], T], *, read_only: bool = False) -> T:
        def run() -> T:
            # A unique-key race (two retries of one request at once) rolls back; the
            # second attempt then sees the winner's record and answers like a retry.
            for attempt in range(2):
                try:
                    with self._engine.connect() as conn:
                        if read_only:
                            conn.execution_options(**READ_ONLY)
                        with conn.begin():
                            return work(conn)
                except sa.exc.IntegrityError:
                    if attempt:
                        raise
            raise AssertionError("unreachable")

        return await asyncio.get_running_loop().run_in_executor(self._db_pool, run)

    async def _cpu(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._image_pool, fn, *args)

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    async def _idempotent(self, context: grpc.aio.ServicerContext, method: str, request: Message,
                          response_type: type[Message], work: Callable[[Connection, str], Message],
                          fingerprint: str | None = None, replaced: Sequence[str] = ()) -> Any:
        """Run `work` once per request_id. `replaced` (filled in by `work`) names the objects the
        records it changes no longer point at: they are deleted once it has committed."""
        tenant = tenant_of(context)
        request_id: str = request.request_id  # type: ignore[attr-defined]
        check_request_id(request_id)
        digest = fingerprint or request_fingerprint(request)

        def transaction(conn: Connection) -> Message:
            earlier = self._keys.replay(conn, tenant, method, request_id, digest, response_type)
            if earlier is not None:
                return earlier
            response = work(conn, tenant)
            self._keys.remember(conn, tenant, method, request_id, digest, response)
            return response

        return await self._commit(transaction, replaced=replaced)

    def _earlier_answer(self, conn: Connection, tenant: str, method: str, request: Message,
                        response_type: type[ResponseT]) -> ResponseT | None:
        """The answer this request_id already got, for a write that checks or builds things before its
        transaction: looked up first, so a retry replays even where those checks would now fail."""
        request_id: str = request.request_id  # type: ignore[attr-defined]
        return self._keys.replay(conn, tenant, method, request_id, request_fingerprint(request), response_type)

    async def _commit(self, work: Callable[[Connection], T], *, written: Sequence[str] = (),
                      replaced: Sequence[str] = ()) -> T:
        """Run `work`, the transaction that decides the fate of objects: `written` were stored for the
        records it adds and are deleted unless it commits; `replaced` (filled in by `work`) are deleted
        once it has committed.

        A cancelled caller (the client went away, its deadline passed) can't stop a transaction
        already running in its thread, so that decision follows the transaction's outcome, not the
        caller's: deleting `written` on cancellation would leave a record without its bytes."""
        commit = asyncio.ensure_future(self._db(work))
        settled = self._in_background(self._settle(commit, written, replaced))
        try:
            result = await asyncio.shield(commit)
        except asyncio.CancelledError:
            raise  # `settled` finishes the job without the caller
        except BaseException:
            await asyncio.shield(settled)
            raise
        # The caller hears back once the objects are gone, as it would without the cancellation guard.
        await asyncio.shield(settled)
        return result

    async def _settle(self, commit: asyncio.Future[Any], written: Sequence[str], replaced: Sequence[str]) -> None:
        try:
            await commit
        except BaseException:
            await self._delete_objects_quietly(written)
        else:
            await self._delete_objects_quietly(replaced)

    def _discard_after(self, keys: Sequence[str], in_flight: Sequence[asyncio.Future[Any]]) -> asyncio.Task[None]:
        """Delete `keys` once `in_flight` (PUTs that may still be running) have finished: a PUT
        landing after the delete would leave an orphan."""
        async def discard() -> None:
            await asyncio.gather(*in_flight, return_exceptions=True)
            await self._delete_objects_quietly(keys)

        return self._in_background(discard())

    def _in_background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        return task

    async def _delete_objects_quietly(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        try:
            await asyncio.shield(self._io(self._store.delete_many, list(keys)))
        except Exception:
            # Orphans cost storage, not correctness; the sweep removes them later.
            log.exception("could not delete objects", extra={"fields": {"keys": list(keys)[:5]}})

    def _dataset_message(self, conn: Connection, row: Row[Any]) -> pb.Dataset:
        return dataset_message(row, records.dataset_counts(conn, [row])[row.id])

    def _image_message(self, conn: Connection, tenant: str, dataset_id: str, image_id: str) -> pb.Image:
        dataset = records.get_dataset(conn, tenant, dataset_id)
        return image_message(records.image_of(conn, dataset_id, image_id), dataset.default_repeat)

    @staticmethod
    def _stale_crop(row: Row[Any], new_key: str) -> list[str]:
        """The cached render of the replaced crop (snapshots never read renders)."""
        return [row.crop_key] if row.crop_key and row.crop_key != new_key else []
