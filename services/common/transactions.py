"""SQL transactions and the objects whose fate they decide, for every service that keeps
records beside bytes in the object store.

- `run`: one transaction on the service's own SQL thread pool, retried once on a unique-key
  race (two retries of one request at once: the second attempt then sees the winner's record).
- `idempotent`: a write that runs once per `request_id` (AIP-155); a retry replays the answer.
- `commit`: a transaction that decides the fate of objects: those `written` for it are deleted
  unless it commits, those it `replaced` once it has.
- Clean-ups run as background tasks held here, so a caller that goes away can't cut them short.

Every call is held to the caller's deadline (at most the database's ceiling, see
dependencies.py): a hung database answers UNAVAILABLE or DEADLINE_EXCEEDED, not never.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import sqlalchemy as sa
from google.protobuf.message import Message
from sqlalchemy.engine import Connection, Engine

from services.common.call_context import current_tenant
from services.common.database import READ_ONLY
from services.common.dependencies import CallObserver, Dependency
from services.common.idempotency import IdempotencyKeys, ResponseT, check_request_id, request_fingerprint
from services.common.objectstore import ObjectStore
from services.common.outages import DATABASE, OBJECT_STORE

log = logging.getLogger(__name__)
T = TypeVar("T")
MessageT = TypeVar("MessageT", bound=Message)


class Transactions:
    def __init__(self, engine: Engine, keys: IdempotencyKeys, store: ObjectStore | None, *, pool_size: int = 8,
                 store_pool_size: int = 16, database_timeout: float = 15.0, store_timeout: float = 60.0,
                 name: str = "db", observer: CallObserver | None = None) -> None:
        self.engine = engine
        self.keys = keys
        self._store = store
        # Each dependency has threads of its own: one that hangs can't starve the other, nor the
        # loop's default executor.
        self._pool = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix=f"{name}-sql")
        self._store_pool = ThreadPoolExecutor(max_workers=store_pool_size, thread_name_prefix=f"{name}-s3")
        self.database = Dependency(DATABASE, database_timeout, self._pool, observer)
        self.objects = Dependency(OBJECT_STORE, store_timeout, self._store_pool, observer)
        # Clean-ups outlive the requests that started them; held here so they aren't collected mid-way.
        self._background: set[asyncio.Task[None]] = set()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._store_pool.shutdown(wait=False, cancel_futures=True)

    async def run(self, work: Callable[[Connection], T], *, read_only: bool = False) -> T:
        """`work` in one transaction; `read_only` ones don't take SQLite's write lock."""
        return await self.database.run(self._transaction(work, read_only),
                                       operation="read" if read_only else "write")

    def _transaction(self, work: Callable[[Connection], T], read_only: bool) -> Callable[[], T]:
        def transaction() -> T:
            for attempt in range(2):
                try:
                    with self.engine.connect() as conn:
                        if read_only:
                            conn.execution_options(**READ_ONLY)
                        with conn.begin():
                            return work(conn)
                except sa.exc.IntegrityError:
                    if attempt:
                        raise
            raise AssertionError("unreachable")

        return transaction

    def replay(self, conn: Connection, tenant: str, method: str, request: Message, response_type: type[ResponseT],
               fingerprint: str | None = None) -> ResponseT | None:
        """The answer this request_id already got, for a write that checks or builds things before its
        transaction: looked up first, so a retry replays even where those checks would now fail."""
        request_id: str = request.request_id  # type: ignore[attr-defined]
        return self.keys.replay(conn, tenant, method, request_id, fingerprint or request_fingerprint(request),
                                response_type)

    async def idempotent(self, method: str, request: Message, response_type: type[MessageT],
                         work: Callable[[Connection, str], MessageT], *, fingerprint: str | None = None,
                         replaced: Sequence[str] = (), written: Sequence[str] = ()) -> MessageT:
        """Run `work(conn, tenant)` once per request_id. `replaced` (filled in by `work`) names the
        objects the records it changes no longer point at: they are deleted once it has committed;
        `written` were stored for the records it adds: deleted unless it commits (a replayed retry
        commits too, so objects a retry wrote under new names must not be listed here)."""
        tenant = current_tenant()
        request_id: str = request.request_id  # type: ignore[attr-defined]
        check_request_id(request_id)
        digest = fingerprint or request_fingerprint(request)

        def transaction(conn: Connection) -> MessageT:
            earlier = self.keys.replay(conn, tenant, method, request_id, digest, response_type)
            if earlier is not None:
                return earlier
            response = work(conn, tenant)
            self.keys.remember(conn, tenant, method, request_id, digest, response)
            return response

        return await self.commit(transaction, replaced=replaced, written=written)

    async def commit(self, work: Callable[[Connection], T], *, written: Sequence[str] = (),
                     replaced: Sequence[str] = ()) -> T:
        """Run `work`, the transaction that decides the fate of objects: `written` were stored for the
        records it adds and are deleted unless it commits; `replaced` (filled in by `work`) are deleted
        once it has committed.

        A cancelled caller (the client went away, its deadline passed) can't stop a transaction
        already running in its thread, so that decision follows the transaction's outcome, not the
        caller's: deleting `written` on cancellation would leave a record without its bytes. For the
        same reason, a transaction given up on at its deadline settles its objects when its thread
        ends, not when the caller stopped waiting."""
        call = self.database.start(self._transaction(work, False), operation="write")
        settled = self.in_background(self._settle(call.finished, written, replaced))
        try:
            result = await call.result()
        except asyncio.CancelledError:
            raise  # `settled` finishes the job without the caller
        except BaseException:
            # A transaction that ended in failure: its objects go before the answer. One still
            # running (the caller's limit passed) is left to `settled`, or the answer would wait on it.
            if call.finished.done():
                await asyncio.shield(settled)
            raise
        # The caller hears back once the objects are gone, as it would without the cancellation guard.
        await asyncio.shield(settled)
        return result

    async def _settle(self, outcome: asyncio.Future[Any], written: Sequence[str], replaced: Sequence[str]) -> None:
        try:
            await outcome
        except BaseException:
            await self.delete_quietly(written)
        else:
            await self.delete_quietly(replaced)

    def discard_after(self, keys: Sequence[str], in_flight: Sequence[asyncio.Future[Any]]) -> asyncio.Task[None]:
        """Delete `keys` once `in_flight` (PUTs that may still be running) have finished: a PUT
        landing after the delete would leave an orphan."""
        async def discard() -> None:
            await asyncio.gather(*in_flight, return_exceptions=True)
            await self.delete_quietly(keys)

        return self.in_background(discard())

    def in_background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def delete_quietly(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        if self._store is None:
            raise RuntimeError("objects to delete, but these transactions were given no object store")
        try:
            await asyncio.shield(self.objects.run(self._store.delete_many, list(keys)))
        except Exception:
            # Orphans cost storage, not correctness; the sweep removes them later.
            log.exception("could not delete objects", extra={"fields": {"keys": list(keys)[:5]}})

    async def settled(self) -> None:
        """Until every transaction started so far has ended and every clean-up has run: tests and
        tools wait on this instead of on time."""
        # Only unfinished ones: a finished task leaves its set in a callback that runs after an
        # await on it returns, so waiting on the sets themselves could spin without yielding.
        while pending := [*self.database.running(), *self.objects.running(),
                          *(task for task in self._background if not task.done())]:
            await asyncio.wait(pending)
