"""The public services, relayed: every method of a public service is forwarded as it came (the
bytes are not decoded here; the internal service checks them) to the internal service that
implements it, acting for the caller's tenant, with the caller's deadline. Server streams are
relayed message by message, never buffered: a slow client holds up only its own stream. Errors
come back as the internal service gave them, with their details (field violations, quota
failures) and nothing else of its metadata; a failure of the channel itself is named by service
(upstream_errors.py), never by its internal address. Requests over the gateway's size limits stop here
(request_sizes.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from services.common.errors import ServiceError, abort_with
from services.gateway.request_sizes import RequestSizes
from services.gateway.upstream import Upstream
from services.gateway.upstream_errors import channel_failure, dependency_name

# The one trailer of an internal service's error a client may see: its google.rpc.Status details.
_DETAILS_TRAILER = "grpc-status-details-bin"


def _trailer_of(error: grpc.aio.AioRpcError) -> tuple[tuple[str, Any], ...]:
    return tuple((key, value) for key, value in (error.trailing_metadata() or ()) if key == _DETAILS_TRAILER)


async def _abort_like(context: grpc.aio.ServicerContext, error: grpc.aio.AioRpcError, dependency: str) -> None:
    trailer = _trailer_of(error)
    failure = None if trailer else channel_failure(error.code(), dependency)
    if failure is not None:
        await abort_with(context, failure)
    await context.abort(error.code(), error.details() or "", trailing_metadata=trailer)


def relay_handler(service: ServiceDescriptor, upstream: Upstream, sizes: RequestSizes) -> grpc.GenericRpcHandler:
    """A handler for every method of `service`, forwarding to `upstream`."""
    channel = upstream.channel
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    dependency = dependency_name(service)
    for method in service.methods:
        path = f"/{service.full_name}/{method.name}"
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                _streamed(channel.stream_stream(path), upstream, _ClientStream(path, sizes), dependency))
        elif method.client_streaming:
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(
                _single(channel.stream_unary(path), upstream, _ClientStream(path, sizes), dependency))
        elif method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _streamed(channel.unary_stream(path), upstream, _OneRequest(path, sizes), dependency))
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _single(channel.unary_unary(path), upstream, _OneRequest(path, sizes), dependency))
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


class _OneRequest:
    """A single request message: checked whole before it goes on."""

    def __init__(self, path: str, sizes: RequestSizes) -> None:
        self._path = path
        self._sizes = sizes

    def admit(self, request: bytes) -> Any:
        self._sizes.check_request(self._path, request)
        return request


class _ClientStream:
    """A client stream: each message checked as it passes. A refusal ends the internal call (so the
    service writes nothing) and is remembered, to be the answer instead of that call's cancellation."""

    def __init__(self, path: str, sizes: RequestSizes) -> None:
        self._path = path
        self._sizes = sizes

    def admit(self, requests: AsyncIterator[bytes]) -> _CheckedStream:
        return _CheckedStream(self._sizes.checked_stream(self._path, requests))


class _CheckedStream:
    def __init__(self, messages: AsyncIterator[bytes]) -> None:
        self._messages = messages
        self.refusal: ServiceError | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._relayed()

    async def _relayed(self) -> AsyncIterator[bytes]:
        try:
            async for message in self._messages:
                yield message
        except ServiceError as error:
            self.refusal = error
            raise


async def _answer_failure(context: grpc.aio.ServicerContext, error: grpc.aio.AioRpcError | asyncio.CancelledError,
                          request: Any, dependency: str) -> None:
    # A refused client stream cancels the internal call: the refusal is the answer.
    if isinstance(request, _CheckedStream) and request.refusal is not None:
        await abort_with(context, request.refusal)
    if isinstance(error, asyncio.CancelledError):
        raise error
    await _abort_like(context, error, dependency)


def _single(call_upstream: Any, upstream: Upstream, requests: _OneRequest | _ClientStream, dependency: str) -> Any:
    """One answer, to one request or to a client stream (passed on as it arrives)."""
    async def relay(request: Any, context: grpc.aio.ServicerContext) -> bytes:
        try:
            checked = requests.admit(request)
        except ServiceError as error:
            await abort_with(context, error)
        try:
            return bytes(await call_upstream(checked, metadata=upstream.metadata(), timeout=context.time_remaining()))
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as error:
            await _answer_failure(context, error, checked, dependency)
            raise  # not reached: abort raises

    return relay


def _streamed(call_upstream: Any, upstream: Upstream, requests: _OneRequest | _ClientStream, dependency: str
              ) -> Any:
    """A server stream, to one request or to a client stream."""
    async def relay(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        try:
            checked = requests.admit(request)
        except ServiceError as error:
            await abort_with(context, error)
        call = call_upstream(checked, metadata=upstream.metadata(), timeout=context.time_remaining())
        try:
            async for message in call:
                yield message
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as error:
            await _answer_failure(context, error, checked, dependency)
        finally:
            call.cancel()  # the client went away: so does the internal stream

    return relay
