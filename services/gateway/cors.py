"""CORS for the gateway's HTTP side, so web apps on the allowed origins call it from browsers.

Preflights are answered here (methods, the Connect headers and `authorization`); answers to an
allowed origin expose the headers Connect and gRPC-Web clients read. No origin is allowed unless
configured (KILN_CORS_ALLOWED_ORIGINS); "*" allows any. Written here rather than taken from a web
framework: the gateway runs bare ASGI applications, and this is all of CORS it needs.
"""

from __future__ import annotations

from collections.abc import Iterable

from services.gateway.asgi import ASGIApp, Message, Receive, Scope, Send

ALLOWED_METHODS = b"GET, POST"
ALLOWED_HEADERS = (b"authorization, content-type, connect-protocol-version, connect-timeout-ms, "
                   b"connect-accept-encoding, connect-content-encoding, grpc-timeout, x-grpc-web, x-user-agent")
EXPOSED_HEADERS = (b"connect-content-encoding, connect-accept-encoding, grpc-status, grpc-message, "
                   b"grpc-status-details-bin, content-encoding")
# How long a browser may keep a preflight's answer.
MAX_AGE_SECONDS = b"7200"


class CorsPolicy:
    def __init__(self, allowed_origins: Iterable[str]) -> None:
        self._origins = frozenset(origin.rstrip("/") for origin in allowed_origins)

    def allows(self, origin: str) -> bool:
        return "*" in self._origins or origin in self._origins


def with_cors(app: ASGIApp, policy: CorsPolicy) -> ASGIApp:
    async def cors(scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers", ())) if scope["type"] == "http" else {}
        origin = headers.get(b"origin")
        if origin is None:
            await app(scope, receive, send)
            return
        allowed = policy.allows(origin.decode("latin-1"))
        if scope["method"] == "OPTIONS" and b"access-control-request-method" in headers:
            await _answer_preflight(send, origin, allowed)
            return
        if not allowed:  # served, but the browser keeps the answer from the page
            await app(scope, receive, send)
            return

        async def send_exposed(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), (b"access-control-allow-origin", origin),
                                                  (b"access-control-expose-headers", EXPOSED_HEADERS),
                                                  (b"vary", b"Origin")]}
            await send(message)

        await app(scope, receive, send_exposed)

    return cors


async def _answer_preflight(send: Send, origin: bytes, allowed: bool) -> None:
    headers = [(b"vary", b"Origin")]
    if allowed:
        headers += [(b"access-control-allow-origin", origin), (b"access-control-allow-methods", ALLOWED_METHODS),
                    (b"access-control-allow-headers", ALLOWED_HEADERS), (b"access-control-max-age", MAX_AGE_SECONDS)]
        body = b""
    else:
        headers.append((b"content-type", b"text/plain; charset=utf-8"))
        body = b"this origin is not allowed to call the API (KILN_CORS_ALLOWED_ORIGINS)\n"
    await send({"type": "http.response.start", "status": 204 if allowed else 403, "headers": headers})
    await send({"type": "http.response.body", "body": body})
