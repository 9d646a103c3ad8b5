"""One way to host a Kiln service: `run_service`.

It serves the bindings over grpc.aio with health checking, reflection and the given server
interceptors; runs the service's background work (periodic rounds such as the sweeps, and
long-running loops such as queue workers); keeps health in step with the service's
dependencies (readiness); exposes Prometheus metrics; and on the way out reports NOT_SERVING,
lets calls finish within the grace period, then stops the background work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.errors import ConfigurationError
from services.common.metrics import MetricsEndpoint, ServiceMetrics
from services.common.process import drain_time
from services.common.readiness import Probe, Readiness
from services.common.server import MAX_MESSAGE_BYTES, ServiceBinding
from services.common.settings import MetricsSettings, ServerSettings, TlsSettings

log = logging.getLogger(__name__)

# Health service name that stays SERVING for as long as the process serves at all: the
# liveness probe asks for it, readiness for "" (or a service's own name).
LIVENESS = "kiln.liveness"
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Background(Protocol):
    @property
    def name(self) -> str: ...

    def run(self) -> Awaitable[None]: ...


@dataclass(frozen=True)
class Periodic:
    """`round` now, then every `interval` seconds; a failed round is logged and the next one runs."""

    name: str
    interval: float
    round: Callable[[], Awaitable[Any]]

    async def run(self) -> None:
        while True:
            try:
                await self.round()
            except Exception:
                log.exception("background round failed", extra={"fields": {"work": self.name}})
            await asyncio.sleep(self.interval)


@dataclass(frozen=True)
class Continuous:
    """A loop that runs for as long as the service does (a queue worker)."""

    name: str
    loop: Callable[[], Awaitable[None]]

    def run(self) -> Awaitable[None]:
        return self.loop()


@dataclass
class RunningServer:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    host: str
    port: int
    names: list[str]
    readiness: Readiness | None = None
    metrics: MetricsEndpoint | None = None
    # What health reports for the service: ready, and not shutting down (for other protocols'
    # health checks, e.g. an HTTP /healthz beside the gRPC server).
    serving: bool = False
    stopping: bool = False

    @property
    def address(self) -> str:
        """Where clients on this machine reach the server (a wildcard bind answers on loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        return f"[{host}]:{self.port}" if ":" in host and not host.startswith("[") else f"{host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return self.metrics.url if self.metrics is not None else ""

    async def set_ready(self, ready: bool) -> None:
        self.serving = ready and not self.stopping
        for name in [*self.names, ""]:
            await self.health.set(name, _SERVING if ready else _NOT_SERVING)

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING first so load balancers drain us, then let calls finish. From here on
        nothing (a readiness probe that just succeeded) can report SERVING again."""
        self.stopping, self.serving = True, False
        await self.health.enter_graceful_shutdown()
        await self.server.stop(drain_time(grace))


@contextlib.asynccontextmanager
async def run_service(bindings: Sequence[ServiceBinding], *, settings: ServerSettings,
                      interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
                      background: Sequence[Background] = (), probes: Sequence[Probe] = (),
                      metrics: ServiceMetrics | None = None, metrics_settings: MetricsSettings | None = None,
                      require_client_certificate: bool = False,
                      max_receive_message_bytes: int = MAX_MESSAGE_BYTES) -> AsyncIterator[RunningServer]:
    """Serve until the block exits. Interceptors run in the order given, the first outermost.
    Messages past `max_receive_message_bytes` are refused by gRPC itself, with no details."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", max_receive_message_bytes),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(options=options, interceptors=list(interceptors),
                             maximum_concurrent_rpcs=settings.max_concurrent_rpcs)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for binding in bindings:
        binding.register(server)
    names = [b.full_name for b in bindings]
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    # The metrics port first: a port that can't be had must not leave a bound gRPC server behind.
    endpoint = MetricsEndpoint(metrics, metrics_settings) if metrics and metrics_settings and \
        metrics_settings.enabled else None
    try:
        port = _listen(server, settings, require_client_certificate)
    except BaseException:
        if endpoint is not None:
            endpoint.close()
        raise
    readiness = Readiness(list(probes), settings.readiness_timeout_seconds) if probes else None
    running = RunningServer(server, health_servicer, settings.host, port, names, readiness, endpoint)
    tasks: list[asyncio.Task[None]] = []
    try:
        await server.start()
        await health_servicer.set(LIVENESS, _SERVING)
        await running.set_ready(readiness is None or not await readiness.probe())
        tasks = [asyncio.create_task(_named(work), name=work.name) for work in background]
        if readiness is not None:
            tasks.append(asyncio.create_task(_follow_readiness(running, readiness,
                                                               settings.readiness_interval_seconds)))
        log.info("listening", extra={"fields": {"address": running.address, "services": names,
                                                "metrics": running.metrics_url}})
        yield running
    finally:
        await running.stop(settings.shutdown_grace)
        await _cancel_all(tasks)
        if readiness is not None:
            readiness.close()
        if endpoint is not None:
            endpoint.close()


def _listen(server: grpc.aio.Server, settings: ServerSettings, require_client_certificate: bool) -> int:
    address = f"{settings.host}:{settings.port}"
    if settings.tls.enabled:
        port = server.add_secure_port(address, _server_credentials(settings.tls, require_client_certificate))
    elif require_client_certificate:
        raise ConfigurationError("mutual TLS needs server TLS: set KILN_SERVER__TLS__CERT_FILE, KEY_FILE and "
                                 "CLIENT_CA_FILE")
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"cannot listen on {address}")
    return port


def _server_credentials(tls: TlsSettings, require_client_certificate: bool) -> grpc.ServerCredentials:
    if tls.cert_file is None or tls.key_file is None:
        raise ConfigurationError("server TLS needs both KILN_SERVER__TLS__CERT_FILE and KILN_SERVER__TLS__KEY_FILE")
    if require_client_certificate and tls.client_ca_file is None:
        raise ConfigurationError("mutual TLS needs KILN_SERVER__TLS__CLIENT_CA_FILE: the CA that signs callers' "
                                 "certificates")
    root = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
    return grpc.ssl_server_credentials([(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
                                       root_certificates=root, require_client_auth=require_client_certificate)


async def _cancel_all(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Cancel the background work and wait for it to end. Python 3.11's asyncio.wait_for returns
    a result that arrived together with a cancellation instead of raising it, so a loop that was
    in such a call (a database round) lives on: it is cancelled again until it ends."""
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)


async def _named(work: Background) -> None:
    try:
        await work.run()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("background work stopped", extra={"fields": {"work": work.name}})


async def _follow_readiness(running: RunningServer, readiness: Readiness, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        with contextlib.suppress(Exception):
            await running.set_ready(not await readiness.probe())
