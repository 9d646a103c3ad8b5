"""The public services, relayed: every method of a public service is forwarded as it came (the
bytes are not decoded here; the internal service checks them) to the internal service that
implements it, acting for the caller's tenant, with the caller's deadline. Server streams are
relayed message by message, never buffered: a slow client holds up only its own stream. Errors
come back as the internal service gave them, with their details (field violations, quota
failures) and nothing else of its metadata."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from services.common.call_context import current_tenant
from services.common.internal_client import tenant_metadata

# The one trailer of an internal service's error a client may see: its google.rpc.Status details.
_DETAILS_TRAILER = "grpc-status-details-bin"


def _trailer_of(error: grpc.aio.AioRpcError) -> tuple[tuple[str, Any], ...]:
    return tuple((key, value) for key, value in (error.trailing_metadata() or ()) if key == _DETAILS_TRAILER)


async def _abort_like(context: grpc.aio.ServicerContext, error: grpc.aio.AioRpcError) -> None:
    await context.abort(error.code(), error.details() or "", trailing_metadata=_trailer_of(error))


def relay_handler(service: ServiceDescriptor, channel: grpc.aio.Channel) -> grpc.GenericRpcHandler:
    """A handler for every method of `service`, forwarding to `channel`."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        path = f"/{service.full_name}/{method.name}"
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(_streamed(channel.stream_stream(path)))
        elif method.client_streaming:
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(_single(channel.stream_unary(path)))
        elif method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(_streamed(channel.unary_stream(path)))
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(_single(channel.unary_unary(path)))
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def _metadata() -> tuple[tuple[str, str], ...]:
    # Only what the gateway vouches for: nothing the client sent goes through.
    return tenant_metadata(current_tenant())


def _single(upstream: Any) -> Any:
    """One answer, to one request or to a client stream (passed on as it arrives)."""
    async def relay(request: Any, context: grpc.aio.ServicerContext) -> bytes:
        try:
            return bytes(await upstream(request, metadata=_metadata(), timeout=context.time_remaining()))
        except grpc.aio.AioRpcError as error:
            await _abort_like(context, error)
            raise  # not reached: abort raises

    return relay


def _streamed(upstream: Any) -> Any:
    """A server stream, to one request or to a client stream."""
    async def relay(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        call = upstream(request, metadata=_metadata(), timeout=context.time_remaining())
        try:
            async for message in call:
                yield message
        except grpc.aio.AioRpcError as error:
            await _abort_like(context, error)
        finally:
            call.cancel()  # the client went away: so does the internal stream

    return relay
