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
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Protocol, TypeVar

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

    async def run(self, fn: Callable[..., T], *args: Any, operation: str = "") -> T:
        """`fn(*args)` on a worker thread, given up on at the limit (see the module docstring)."""
        limit = call_context.remaining(self.ceiling)
        if limit <= 0:
            raise self._timed_out(limit)
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, functools.partial(context.run, fn, *args))
        self._running.add(future)
        future.add_done_callback(self._running.discard)
        started = time.perf_counter()
        outcome = "ok"
        try:
            # Shielded: giving up must not cancel the future, whose thread runs on regardless.
            return await asyncio.wait_for(asyncio.shield(future), limit)
        except TimeoutError:
            outcome = "timeout"
            future.add_done_callback(_retrieve)
            raise self._timed_out(limit) from None
        except asyncio.CancelledError:
            outcome = "cancelled"
            future.add_done_callback(_retrieve)
            raise
        except Exception as exc:
            outcome = "unavailable" if failed_dependency(exc) == self.name else "error"
            raise
        finally:
            if self._observer is not None:
                self._observer.observe(self.name, operation or getattr(fn, "__name__", "call"),
                                       time.perf_counter() - started, outcome)

    def running(self) -> list[asyncio.Future[Any]]:
        """Calls whose threads still run, given up on or not."""
        return [f for f in self._running if not f.done()]

    def _timed_out(self, limit: float) -> Exception:
        if call_context.caller_deadline_passed():
            return DependencyDeadline(self.name)
        return DependencyUnavailable(self.name, f"no answer within {limit:.3g} seconds")


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark the late outcome of an abandoned call as seen, so asyncio doesn't log it."""
    if not future.cancelled():
        future.exception()
