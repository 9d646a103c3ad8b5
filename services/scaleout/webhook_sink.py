"""Webhook receivers for the proof: one HTTP server, a path per tenant's endpoint, every delivery
verified against its endpoint's secret and recorded (duplicates included: a receiver dedupes by
`webhook-id`, and the proof counts how often it had to)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kiln.webhooks import WebhookVerificationError, verify


@dataclass(frozen=True)
class Delivery:
    endpoint: str
    webhook_id: str
    event: dict[str, Any]


class WebhookSink:
    def __init__(self, address: str) -> None:
        self._secrets: dict[str, str] = {}
        self._lock = threading.Lock()
        self.deliveries: list[Delivery] = []
        self.rejected: list[str] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                endpoint = self.path.strip("/")
                status = sink._receive(endpoint, body, {k.lower(): v for k, v in self.headers.items()})
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((address, 0), Handler)
        self._server.daemon_threads = True
        self.address = address
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-sink", daemon=True)

    def url(self, endpoint: str) -> str:
        return f"http://{self.address}:{self._server.server_address[1]}/{endpoint}"

    def expect(self, endpoint: str, secret: str) -> None:
        with self._lock:
            self._secrets[endpoint] = secret

    def _receive(self, endpoint: str, body: bytes, headers: dict[str, str]) -> int:
        with self._lock:
            secret = self._secrets.get(endpoint)
        if secret is None:
            self.rejected.append(f"{endpoint}: no such endpoint")
            return 404
        try:
            event = verify(body, headers, secret)
        except WebhookVerificationError as error:
            self.rejected.append(f"{endpoint}: {error}")
            return 400
        with self._lock:
            self.deliveries.append(Delivery(endpoint, headers["webhook-id"], event))
        return 204

    def received(self) -> list[Delivery]:
        """Every delivery so far, in the order they came."""
        with self._lock:
            return list(self.deliveries)

    @contextlib.contextmanager
    def serving(self) -> Iterator[WebhookSink]:
        self._thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
