"""An ASGI application served over HTTP/1.1 by uvicorn, inside the running event loop (beside the
gateway's gRPC server), started and stopped by its owner: uvicorn's own `serve()` would take over
the process's signals, which the service process already handles (services/common/process.py)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
from collections.abc import AsyncIterator

import uvicorn

from services.common.errors import ConfigurationError
from services.gateway.asgi import ASGIApp


class HttpServer:
    def __init__(self, server: uvicorn.Server, listening: socket.socket, ticking: asyncio.Task[None]) -> None:
        self._server = server
        self._socket = listening
        self._ticking = ticking
        host, port = listening.getsockname()[:2]
        shown = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        self.address = f"[{shown}]:{port}" if ":" in shown else f"{shown}:{port}"

    async def stop(self, drain_seconds: float) -> None:
        """Stop taking connections, let requests in flight finish for up to `drain_seconds` (streams
        still open then are cancelled), then close."""
        self._server.config.timeout_graceful_shutdown = max(1, math.ceil(drain_seconds))
        self._server.should_exit = True
        await self._ticking
        await self._server.shutdown(sockets=[self._socket])


def _listen(host: str, port: int) -> socket.socket:
    # Made with IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY only on connections of such a
    # socket, and without it every answer (headers and body are written apart) waits for the
    # client's delayed ACK, about 40 ms.
    listening = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM,
                              socket.IPPROTO_TCP)
    try:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind((host.strip("[]"), port))
        listening.listen(2048)
    except OSError as error:
        listening.close()
        raise ConfigurationError(f"the gateway cannot serve HTTP on {host}:{port} ({error}): set KILN_HTTP__HOST "
                                 "and KILN_HTTP__PORT (0 picks a free port)") from None
    return listening


async def start_http(app: ASGIApp, host: str, port: int) -> HttpServer:
    listening = _listen(host, port)
    config = uvicorn.Config(app, lifespan="off", ws="none", interface="asgi3", log_config=None, access_log=False,
                            server_header=False)
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)  # as Server.serve() would (here: lifespan off)
    try:
        await server.startup(sockets=[listening])
    except BaseException:
        listening.close()
        raise
    # Its loop keeps the Date header fresh and notices should_exit.
    return HttpServer(server, listening, asyncio.create_task(server.main_loop(), name="http server"))


@contextlib.asynccontextmanager
async def serving_http(app: ASGIApp, host: str, port: int, drain_seconds: float) -> AsyncIterator[HttpServer]:
    server = await start_http(app, host, port)
    try:
        yield server
    finally:
        await server.stop(drain_seconds)
