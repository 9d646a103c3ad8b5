"""The gRPC server every Kiln service runs: grpc.aio with health checking,
reflection, graceful shutdown on SIGTERM/SIGINT and message-size limits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.settings import ServerSettings

log = logging.getLogger(__name__)

# Upload chunks stay under 4 MiB; leave headroom for the envelope.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class ServiceBinding:
    """One servicer and how to add it to a server."""

    full_name: str
    register: Callable[[grpc.aio.Server], None]


class RunningServer:
    def __init__(self, server: grpc.aio.Server, health_servicer: health.aio.HealthServicer, port: int,
                 names: Sequence[str]) -> None:
        self.server = server
        self.health = health_servicer
        self.port = port
        self.names = list(names)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING first so load balancers drain us, then let calls finish."""
        for name in [*self.names, ""]:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace)

    async def wait(self) -> None:
        await self.server.wait_for_termination()


ServicerT = TypeVar("ServicerT")


@dataclass
class RunningService(Generic[ServicerT]):
    """A started server and the servicer behind it (what tests and the demo hold on to)."""

    server: RunningServer
    servicer: ServicerT

    @property
    def address(self) -> str:
        return self.server.address


def tolerant_binding(pb2_module: Any, service: str, add_to_server: Callable[[Any, Any], None],
                     servicer: Any) -> ServiceBinding:
    """Bind a generated servicer so that requests it cannot parse get INVALID_ARGUMENT (see malformed.py)."""
    from services.common.malformed import register_tolerant, request_types_of

    descriptor = pb2_module.DESCRIPTOR.services_by_name[service]
    return ServiceBinding(descriptor.full_name, lambda server: register_tolerant(
        server, add_to_server, servicer, request_types_of(descriptor, pb2_module)))


async def start_server(bindings: Sequence[ServiceBinding], settings: ServerSettings) -> RunningServer:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for binding in bindings:
        binding.register(server)
    names = [b.full_name for b in bindings]
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    if port == 0:
        raise RuntimeError(f"cannot listen on {settings.host}:{settings.port}")
    await server.start()
    for name in [*names, ""]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("listening", extra={"fields": {"port": port, "services": names}})
    return RunningServer(server, health_servicer, port, names)


async def wait_for_termination_signal() -> None:
    """Block until SIGTERM or SIGINT; the caller then shuts down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("termination signal received")
