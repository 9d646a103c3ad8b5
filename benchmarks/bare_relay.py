"""A gRPC relay with nothing of Kiln's in it: every DatasetService and TrainerService method passed on as
bytes, with the client's own metadata, by one grpc.aio server and channel. No key check, limits,
interceptors or tenant. It is the floor of a Python gateway hop, which gateway_overhead compares
the gateway with: the difference is what Kiln's own checks cost.

`KILN_SERVER__PORT=… python -m benchmarks.bare_relay UPSTREAM` serves until SIGTERM (the port as
every service takes it, so the harness starts it like one)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from kiln.v1 import dataset_pb2, trainer_pb2

_PASSED = ("authorization", "x-kiln-tenant")


def _metadata(context: grpc.aio.ServicerContext) -> tuple[tuple[str, str | bytes], ...]:
    return tuple((k, v) for k, v in context.invocation_metadata() or () if k in _PASSED)


def _handler(channel: grpc.aio.Channel, service: Any) -> grpc.GenericRpcHandler:
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        path = f"/{service.full_name}/{method.name}"
        if method.server_streaming:
            upstream_stream: Any = (channel.stream_stream if method.client_streaming else channel.unary_stream)(path)

            async def streamed(request: Any, context: grpc.aio.ServicerContext,
                               upstream: Any = upstream_stream) -> AsyncIterator[bytes]:
                async for message in upstream(request, metadata=_metadata(context)):
                    yield message

            make = (grpc.stream_stream_rpc_method_handler if method.client_streaming
                    else grpc.unary_stream_rpc_method_handler)
            handlers[method.name] = make(streamed)
        else:
            upstream_single: Any = (channel.stream_unary if method.client_streaming else channel.unary_unary)(path)

            async def single(request: Any, context: grpc.aio.ServicerContext, upstream: Any = upstream_single) -> Any:
                return await upstream(request, metadata=_metadata(context))

            make = (grpc.stream_unary_rpc_method_handler if method.client_streaming
                    else grpc.unary_unary_rpc_method_handler)
            handlers[method.name] = make(single)
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


async def serve(port: int, upstream: str) -> None:
    options = (("grpc.max_receive_message_length", 8 * 1024 * 1024),
               ("grpc.max_send_message_length", 8 * 1024 * 1024))
    channel = grpc.aio.insecure_channel(upstream, options=options)
    server = grpc.aio.server(options=options)
    for file in (dataset_pb2, trainer_pb2):
        for service in file.DESCRIPTOR.services_by_name.values():
            server.add_generic_rpc_handlers((_handler(channel, service),))
    checks = health.aio.HealthServicer()
    await checks.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)
    await channel.close()


if __name__ == "__main__":
    asyncio.run(serve(int(os.environ["KILN_SERVER__PORT"]), sys.argv[1]))
