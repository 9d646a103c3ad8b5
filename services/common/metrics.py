"""Prometheus metrics of one service: every RPC's latency and status code, every dependency
call's latency and outcome, and the depth and oldest lease of every work queue.

Each service has a registry of its own, so several services in one process (the demo, the
tests) never clash, and each is scraped on its own port.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server

from services.common.interceptors import AroundCalls
from services.common.settings import MetricsSettings

# From a cache hit to a slow upload or a long stream.
_RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_DEPENDENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass(frozen=True)
class QueueStats:
    depth: int  # items waiting or held by a lease
    oldest_lease_age: float  # seconds the longest-held lease has been held; 0 with none


class ServiceMetrics:
    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        self.rpc_duration = Histogram(
            "kiln_rpc_duration_seconds", "Time to serve a call, by method and status code",
            ["service", "method", "code"], registry=self.registry, buckets=_RPC_BUCKETS)
        self.dependency_duration = Histogram(
            "kiln_dependency_call_duration_seconds",
            "Time of a call to a dependency (database, object store), by operation and outcome",
            ["service", "dependency", "operation", "outcome"], registry=self.registry, buckets=_DEPENDENCY_BUCKETS)
        self.queue_depth = Gauge("kiln_work_queue_depth", "Items waiting or leased in a work queue",
                                 ["service", "queue"], registry=self.registry)
        self.queue_lease_age = Gauge("kiln_work_queue_oldest_lease_age_seconds",
                                     "How long the longest-held lease of a work queue has been held",
                                     ["service", "queue"], registry=self.registry)

    def interceptor(self) -> AroundCalls:
        """Outermost, so refused calls (no credential, bad tenant) are counted too."""
        @contextlib.asynccontextmanager
        async def timed(method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
            started = time.perf_counter()
            code = "OK"
            try:
                yield
            except BaseException as exc:
                code = _code_of(context, exc)
                raise
            else:
                found = context.code()
                code = _name(found) if found is not None else "OK"
            finally:
                self.rpc_duration.labels(self.service, method, code).observe(time.perf_counter() - started)

        return AroundCalls(timed)

    def observe(self, dependency: str, operation: str, seconds: float, outcome: str) -> None:
        self.dependency_duration.labels(self.service, dependency, operation, outcome).observe(seconds)

    def record_queue(self, queue: str, stats: QueueStats) -> None:
        self.queue_depth.labels(self.service, queue).set(stats.depth)
        self.queue_lease_age.labels(self.service, queue).set(stats.oldest_lease_age)


class MetricsEndpoint:
    """`/metrics` over HTTP on its own thread."""

    def __init__(self, metrics: ServiceMetrics, settings: MetricsSettings) -> None:
        self._server, self._thread = start_http_server(settings.port, addr=settings.host, registry=metrics.registry)
        self.host = settings.host
        self.port = int(self._server.server_port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def _code_of(context: grpc.aio.ServicerContext, exc: BaseException) -> str:
    found = context.code()
    if found is not None:
        return _name(found)
    return "CANCELLED" if isinstance(exc, asyncio.CancelledError) else "UNKNOWN"


def _name(code: Any) -> str:
    if isinstance(code, grpc.StatusCode):
        return code.name
    # grpc.aio reports the code a handler aborted with as its number.
    for member in grpc.StatusCode:
        if member.value[0] == code:
            return member.name
    return str(code)
