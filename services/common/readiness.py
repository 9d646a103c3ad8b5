"""Readiness: health says NOT_SERVING while a dependency the service needs is unreachable, so
load balancers and Kubernetes drain the replica until it heals.

Each probe runs on a thread of its own and never twice at once: a probe stuck on a hung
dependency counts as a failure instead of piling up threads behind it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from services.common import call_context
from services.common.database import READ_ONLY
from services.common.outages import DATABASE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Probe:
    """`check` raises (or blocks) while `dependency` is unreachable. Blocking; called with a
    deadline in call_context, which the object store and SQL clients honour."""

    dependency: str
    check: Callable[[], None]


class Readiness:
    def __init__(self, probes: list[Probe], timeout: float) -> None:
        self._probes = probes
        self._timeout = timeout
        self._pools = {p.dependency: ThreadPoolExecutor(1, thread_name_prefix=f"probe-{p.dependency}")
                       for p in probes}
        self._running: dict[str, Future[None]] = {}
        self.unreachable: frozenset[str] = frozenset()

    async def probe(self) -> frozenset[str]:
        """The dependencies unreachable now (also kept in `unreachable`)."""
        results = await asyncio.gather(*(self._probe_one(p) for p in self._probes))
        failed = frozenset(p.dependency for p, ok in zip(self._probes, results, strict=True) if not ok)
        if failed != self.unreachable:
            if failed:
                log.warning("dependencies unreachable; not ready", extra={"fields": {"unreachable": sorted(failed)}})
            else:
                log.info("dependencies reachable again; ready")
        self.unreachable = failed
        return failed

    async def _probe_one(self, probe: Probe) -> bool:
        running = self._running.get(probe.dependency)
        if running is not None and not running.done():
            return False  # still stuck in the previous probe
        future = self._pools[probe.dependency].submit(self._check, probe)
        self._running[probe.dependency] = future
        outcome = asyncio.wrap_future(future)
        outcome.add_done_callback(_retrieve)
        try:
            await asyncio.wait_for(asyncio.shield(outcome), self._timeout)
        except Exception as exc:
            log.debug("probe failed", extra={"fields": {"dependency": probe.dependency, "error": repr(exc)}})
            return False
        return True

    def _check(self, probe: Probe) -> None:
        with call_context.deadline_in(self._timeout):
            probe.check()

    def close(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def database_probe(engine: Engine) -> Probe:
    """SELECT 1 on a read-only connection: on SQLite a writer's transaction would queue for the
    write lock, and a probe must say whether the database answers, not wait its turn to write."""
    def check() -> None:
        with engine.connect() as conn:
            conn.execution_options(**READ_ONLY)
            conn.exec_driver_sql("SELECT 1")

    return Probe(DATABASE, check)
