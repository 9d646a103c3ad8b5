"""The public services over the Connect protocol (JSON and binary, unary and server streams), for
browsers, curl and Connect clients: each service is the ASGI application its generated
`*_connect.py` defines, implemented by a relay that calls the internal service over the same
gRPC channels as the gRPC side, acting for the key's tenant, with the caller's deadline, after
the same request size checks.

Every call passes the same key check and per-key limits as on gRPC (a connectrpc metadata
interceptor, so a refused call is answered before its body is read). Errors keep their code,
message and google.rpc details. Server streams are relayed message by message; a client that
goes away cancels the internal stream.
"""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from connectrpc.code import Code
from connectrpc.codec import Codec
from connectrpc.compat import google_protobuf_binary_codec, google_protobuf_json_codec
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from connectrpc.server import ConnectASGIApplication
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from services.common.call_context import acting_for
from services.common.errors import FieldViolation, ServiceError, invalid, unauthenticated
from services.common.metrics import ServiceMetrics
from services.gateway.connect_errors import from_rpc_error, from_service_error, grpc_code_name
from services.gateway.key_auth import REFUSED, key_of_authorization
from services.gateway.key_verifier import KeyVerifier
from services.gateway.limits import KeyLimits
from services.gateway.request_sizes import RequestSizes
from services.gateway.upstream import Upstream
from services.gateway.upstream_errors import dependency_name

# What a client-streaming method answers on HTTP: browsers can't stream a request body, and the
# Connect protocol would need it for these; the gRPC side serves them.
_INSTEAD = {"kiln.v1.DatasetService/UploadImage": "upload with CreateImageUpload (a signed form to POST the file "
                                                  "to) and then FinalizeImageUpload"}


def streamed_request_message(path: str) -> str:
    """Why a method that takes a stream of requests is not served over HTTP, and what to do instead."""
    method = path.strip("/")
    instead = f"{_INSTEAD[method]}, or " if method in _INSTEAD else ""
    return (f"{method} takes a stream of requests, which the gateway's HTTP (Connect) side does not accept: "
            f"{instead}call it over gRPC")


class StrictCodec:
    """A connectrpc codec that refuses what it can't read as the method's request, unknown JSON
    fields included, with INVALID_ARGUMENT and a BadRequest naming the problem (connectrpc's
    own answer carries no field violation)."""

    def __init__(self, inner: Codec) -> None:
        self._inner = inner

    def name(self) -> str:
        return self._inner.name()

    def encode(self, message: Any) -> bytes:
        return self._inner.encode(message)

    def decode(self, data: bytes | bytearray, message_class: type[Any]) -> Any:
        try:
            return self._inner.decode(data, message_class)
        except Exception as error:
            what = message_class.DESCRIPTOR.full_name
            raise from_service_error(invalid([FieldViolation(
                "", f"the body is not a valid {what} in {self.name()}: {error}", "MALFORMED")])) from None


CODECS: Sequence[Codec] = (StrictCodec(google_protobuf_binary_codec()),
                           StrictCodec(google_protobuf_json_codec(ignore_unknown_fields=False)))


class CallMetrics:
    """Each call's time and status code in the service's `kiln_rpc_duration_seconds`, as gRPC
    calls are counted (the same method names and code names). First of the interceptors, so
    refused calls are counted too."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics

    async def on_start(self, ctx: RequestContext[Any, Any]) -> float:
        return time.perf_counter()

    async def on_end(self, started: float, ctx: RequestContext[Any, Any], error: Exception | None) -> None:
        code = "OK" if error is None else grpc_code_name(error.code) if isinstance(error, ConnectError) else "UNKNOWN"
        self._metrics.rpc_duration.labels(self._metrics.service, f"/{ctx.method.service_name}/{ctx.method.name}",
                                          code).observe(time.perf_counter() - started)


class KeyCheck:
    """The API key check and per-key limits, as a connectrpc metadata interceptor: it runs before
    the body is read, and the call then acts for the key's tenant until it ends."""

    def __init__(self, verifier: KeyVerifier, limits: KeyLimits) -> None:
        self._verifier = verifier
        self._limits = limits

    async def on_start(self, ctx: RequestContext[Any, Any]) -> contextlib.ExitStack:
        presented = key_of_authorization(ctx.request_headers.get("authorization", ""))
        try:
            verified = await self._verifier.verify(presented) if presented else None
            if verified is None:
                raise unauthenticated(REFUSED)
            release = self._limits.admit(verified.key_id, f"/{ctx.method.service_name}/{ctx.method.name}")
        except ServiceError as error:
            raise from_service_error(error) from None
        call = contextlib.ExitStack()
        call.callback(release)
        call.enter_context(acting_for(verified.tenant))
        return call

    async def on_end(self, call: contextlib.ExitStack, ctx: RequestContext[Any, Any], error: Exception | None) -> None:
        call.close()


def _timeout(ctx: RequestContext[Any, Any]) -> float | None:
    remaining = ctx.timeout_ms
    return max(0.0, remaining / 1000) if remaining is not None else None


def _checked(path: str, request: Any, sizes: RequestSizes) -> bytes:
    """The request as the internal service takes it, after the gateway's size checks (as on gRPC)."""
    raw = bytes(request.SerializeToString())
    try:
        sizes.check_request(path, raw)
    except ServiceError as error:
        raise from_service_error(error) from None
    return raw


def _relayed(service: ServiceDescriptor, method: MethodDescriptor, upstream: Upstream,
             sizes: RequestSizes) -> Callable[..., Any]:
    path = f"/{service.full_name}/{method.name}"
    dependency = dependency_name(service)
    output = message_factory.GetMessageClass(method.output_type)
    if method.client_streaming:
        async def refuse(requests: AsyncIterator[Any], ctx: RequestContext[Any, Any]) -> Any:
            raise ConnectError(Code.UNIMPLEMENTED, streamed_request_message(path))

        return refuse
    if method.server_streaming:
        open_stream: grpc.aio.UnaryStreamMultiCallable[bytes, Any] = upstream.channel.unary_stream(
            path, response_deserializer=output.FromString)

        async def stream(request: Any, ctx: RequestContext[Any, Any]) -> AsyncIterator[Any]:
            call = open_stream(_checked(path, request, sizes), metadata=upstream.metadata(), timeout=_timeout(ctx))
            try:
                async for message in call:
                    yield message
            except grpc.aio.AioRpcError as error:
                raise from_rpc_error(error, dependency) from None
            finally:
                call.cancel()  # the client went away (or the stream ended): so does the internal stream

        return stream
    single: grpc.aio.UnaryUnaryMultiCallable[bytes, Any] = upstream.channel.unary_unary(
        path, response_deserializer=output.FromString)

    async def unary(request: Any, ctx: RequestContext[Any, Any]) -> Any:
        raw = _checked(path, request, sizes)
        try:
            return await single(raw, metadata=upstream.metadata(), timeout=_timeout(ctx))
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, dependency) from None

    return unary


class Relay:
    """One public service's generated Connect interface, every method forwarded to `upstream`.
    The generated application names methods in snake case (`get_image_url` for GetImageUrl):
    they are looked up by name, so a service needs nothing written for it here."""

    def __init__(self, service: ServiceDescriptor, upstream: Upstream, sizes: RequestSizes) -> None:
        self._methods = {method.name.lower(): _relayed(service, method, upstream, sizes)
                         for method in service.methods}

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any] | AsyncIterator[Any]]:
        try:
            return self._methods[name.replace("_", "")]
        except KeyError:
            raise AttributeError(name) from None


def generated_application(service: ServiceDescriptor) -> Callable[..., ConnectASGIApplication[Any]]:
    """The ASGI application class scripts/gen_protos.py generated for `service` (it takes the
    implementation, then connectrpc's keyword options)."""
    module = importlib.import_module(service.file.name.removesuffix(".proto").replace("/", ".") + "_connect")
    application: Callable[..., ConnectASGIApplication[Any]] = getattr(module, f"{service.name}ASGIApplication")
    return application


def connect_application(service: ServiceDescriptor, upstream: Upstream, interceptors: Sequence[Any],
                        sizes: RequestSizes) -> ConnectASGIApplication[Any]:
    """`interceptors`: connectrpc interceptors, in order (CallMetrics, then KeyCheck)."""
    # read_max_bytes bounds a message after decompression (http_app.py bounds the body as sent).
    return generated_application(service)(Relay(service, upstream, sizes), interceptors=interceptors,
                                          read_max_bytes=sizes.max_request_bytes, codecs=CODECS)
