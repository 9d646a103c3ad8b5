"""The gateway's HTTP application: each public service's Connect application at its own paths
(`/kiln.v1.DatasetService/GetDataset`), request bodies limited in size, `GET /healthz` saying
whether the gateway is ready (for load balancers that speak only HTTP), and the web workbench on
every other GET."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping

from services.common.call_context import current_tenant
from services.common.errors import quota_exceeded
from services.gateway.asgi import ASGIApp, Message, Receive, Scope, Send
from services.gateway.connect_app import streamed_request_message
from services.gateway.connect_errors import from_service_error

HEALTH_PATH = "/healthz"


def gateway_http_app(services: Mapping[str, ASGIApp], streamed_requests: Collection[str], max_request_bytes: int,
                     serving: Callable[[], bool], web: ASGIApp | None = None) -> ASGIApp:
    """`services`: the Connect application of each service, by full name; `streamed_requests`: the
    paths of methods that take a stream of requests (answered with what to do instead); `web`: the
    workbench's files, for GET and HEAD of any path that is no method."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # no websockets; lifespan is off
            return
        path = scope["path"]
        if path == HEALTH_PATH:
            await _health(send, scope["method"], serving())
            return
        service = services.get(path.lstrip("/").partition("/")[0])
        if service is None and web is not None and scope["method"] in ("GET", "HEAD"):
            await web(scope, receive, send)
        elif service is None:
            await _answer(send, 404, b"text/plain; charset=utf-8", f"no such method: {path}\n".encode())
        elif path in streamed_requests:
            # Answered here, whatever the content type: connectrpc would refuse a unary content type
            # for such a method with a bare 415 before any handler could explain.
            body = json.dumps({"code": "unimplemented", "message": streamed_request_message(path)}).encode()
            await _answer(send, 501, b"application/json", body)
        else:
            await service(scope, LimitedBody(receive, max_request_bytes, _declared_length(scope)), sized(send))

    return app


def sized(send: Send) -> Send:
    """`send` with the response's start held back to its first body part: an answer sent whole (every
    unary answer) then goes out with its Content-Length, in two writes, instead of chunked in three,
    each a wake-up of the client."""
    held: Message | None = None

    async def send_sized(message: Message) -> None:
        nonlocal held
        if message["type"] == "http.response.start":
            held = message
            return
        if held is not None:
            start, held = held, None
            whole = message["type"] == "http.response.body" and not message.get("more_body", False)
            if whole and all(name.lower() != b"content-length" for name, _ in start.get("headers", ())):
                body_length = str(len(message.get("body", b""))).encode()
                start = {**start, "headers": [*start.get("headers", ()), (b"content-length", body_length)]}
            await send(start)
        await send(message)

    return send_sized


class LimitedBody:
    """The request's receive(), refusing a body over `limit` bytes as soon as it is declared or
    read: RESOURCE_EXHAUSTED with a QuotaFailure. Raised from receive() so that connectrpc answers it
    in the protocol the caller speaks, as any error while reading (its own read limit answers
    without the QuotaFailure); the rest of the body is not read."""

    def __init__(self, receive: Receive, limit: int, declared: int | None) -> None:
        self._receive = receive
        self._limit = limit
        self._declared = declared
        self._read = 0

    async def __call__(self) -> Message:
        if self._declared is not None and self._declared > self._limit:
            raise self._too_large()
        message = await self._receive()
        if message["type"] == "http.request":
            self._read += len(message.get("body", b""))
            if self._read > self._limit:
                raise self._too_large()
        return message

    def _too_large(self) -> Exception:
        # Bodies are read after the key check (a connectrpc metadata interceptor): the tenant is known.
        return from_service_error(quota_exceeded(
            f"the request body is over the gateway's limit of {self._limit} bytes; send less in one request "
            "(images upload through CreateImageUpload's signed form)", "REQUEST_TOO_LARGE",
            subject=f"tenant:{current_tenant()}", description="max_request_bytes", limit=str(self._limit)))


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _health(send: Send, method: str, serving: bool) -> None:
    if method not in ("GET", "HEAD"):
        await _answer(send, 405, b"text/plain; charset=utf-8", b"GET /healthz\n", [(b"allow", b"GET, HEAD")])
        return
    status = "SERVING" if serving else "NOT_SERVING"
    await _answer(send, 200 if serving else 503, b"application/json", json.dumps({"status": status}).encode())


async def _answer(send: Send, status: int, content_type: bytes, body: bytes,
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})
