"""Blocking calls to a dependency (the database, the object store), made from async code with
a time limit: what is left of the caller's deadline, at most the dependency's ceiling.

A hung dependency holds a thread, not the caller: the caller stops waiting at the limit and
hears UNAVAILABLE (the ceiling passed) or DEADLINE_EXCEEDED (its own deadline passed). The
thread carries the call's context, so clients that read the deadline (the object store's
HTTP pool, the SQL engine's per-transaction timeouts) give up on their own as well.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Generic, Protocol, TypeVar

from services.common import call_context
from services.common.outages import DependencyDeadline, DependencyUnavailable, failed_dependency

T = TypeVar("T")


class CallObserver(Protocol):
    """Told how long each dependency call took (metrics.py implements it)."""

    def observe(self, dependency: str, operation: str, seconds: float, outcome: str) -> None: ...


class Dependency:
    def __init__(self, name: str, ceiling: float, executor: Executor | None = None,
                 observer: CallObserver | None = None) -> None:
        if ceiling <= 0:
            raise ValueError(f"the {name} call ceiling must be positive, not {ceiling}")
        self.name = name
        self.ceiling = ceiling
        self._executor = executor
        self._observer = observer
        # Calls whose threads still run, including those the caller gave up on.
        self._running: set[asyncio.Future[Any]] = set()

    def start(self, fn: Callable[..., T], *args: Any, operation: str = "") -> Call[T]:
        """`fn(*args)` on a worker thread, held to the limit from now (see the module docstring)."""
        limit = call_context.remaining(self.ceiling)
        until = time.monotonic() + limit
        abandoned = threading.Event()
        context = contextvars.copy_context()

        def body() -> T:
            # Given up on while it waited for a thread: the caller already heard why, and work
            # done now would land after the answer (a commit after its bytes were discarded).
            if abandoned.is_set():
                raise DependencyUnavailable(self.name, "given up on before a thread was free")
            # The deadline is the caller's, from when it called, however long the wait for a thread.
            with call_context.deadline_at(until):
                return fn(*args)

        future = asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(context.run, body))
        self._running.add(future)
        future.add_done_callback(self._running.discard)
        return Call(self, future, limit, abandoned, operation or getattr(fn, "__name__", "call"))

    async def run(self, fn: Callable[..., T], *args: Any, operation: str = "") -> T:
        return await self.start(fn, *args, operation=operation).result()

    def running(self) -> list[asyncio.Future[Any]]:
        """Calls whose threads still run, given up on or not."""
        return [f for f in self._running if not f.done()]

    def observe(self, operation: str, seconds: float, outcome: str) -> None:
        if self._observer is not None:
            self._observer.observe(self.name, operation, seconds, outcome)

    def timed_out(self, limit: float) -> Exception:
        if call_context.caller_deadline_passed():
            return DependencyDeadline(self.name)
        return DependencyUnavailable(self.name, f"no answer within {limit:.3g} seconds")


class Call(Generic[T]):
    """One call to a dependency. `finished` ends when its thread does, whether or not the caller
    waited that long; `result()` waits at most the call's limit."""

    def __init__(self, dependency: Dependency, finished: asyncio.Future[T], limit: float, abandoned: threading.Event,
                 operation: str) -> None:
        self.finished = finished
        self._dependency = dependency
        self._limit = limit
        self._abandoned = abandoned
        self._operation = operation

    async def result(self) -> T:
        started = time.perf_counter()
        outcome = "ok"
        try:
            if self._limit <= 0:
                raise TimeoutError
            # Shielded: giving up must not cancel the future, whose thread runs on regardless.
            return await asyncio.wait_for(asyncio.shield(self.finished), self._limit)
        except TimeoutError:
            outcome = "timeout"
            self._give_up()
            raise self._dependency.timed_out(self._limit) from None
        except asyncio.CancelledError:
            outcome = "cancelled"
            self._give_up()
            raise
        except Exception as exc:
            outcome = "unavailable" if failed_dependency(exc) == self._dependency.name else "error"
            raise
        finally:
            self._dependency.observe(self._operation, time.perf_counter() - started, outcome)

    def _give_up(self) -> None:
        self._abandoned.set()
        self.finished.add_done_callback(_retrieve)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark the late outcome of an abandoned call as seen, so asyncio doesn't log it."""
    if not future.cancelled():
        future.exception()
