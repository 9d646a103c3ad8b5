"""A real HTTP receiver on 127.0.0.1 for webhook tests: records every request it gets and answers
each path as the test scripted (by default 200)."""

from __future__ import annotations

import collections
import contextlib
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when it arrived


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    # Held until this is set (or the test ends): a receiver still busy when something happens.
    hold: threading.Event | None = None


class Receiver:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._changed = threading.Condition()
        self._received: list[Received] = []
        self._scripts: dict[str, collections.deque[Answer]] = collections.defaultdict(collections.deque)
        self._defaults: dict[str, Answer] = {}
        self._holds: list[threading.Event] = []
        self._closing = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                receiver._record(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body,
                                          time.monotonic()))
                answer = receiver._answer_for(self.path)
                if answer.hold is not None:
                    answer.hold.wait(60)
                    if receiver._closing.is_set():
                        return
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # The names clients asked for in their TLS handshakes (SNI).
        self.server_names: list[str] = []
        self._scheme = "http"
        if tls is not None:
            tls.sni_callback = lambda _socket, name, _context: self.server_names.append(name or "")
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
            self._scheme = "https"
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self._scheme}://{host}:{self.port}{path}"

    def script(self, path: str, *answers: Answer, then: Answer | None = None) -> None:
        """Answer the next requests to `path` with `answers`, in order, then with `then` (200)."""
        with self._changed:
            self._scripts[path].extend(answers)
            self._holds += [answer.hold for answer in answers if answer.hold is not None]
            if then is not None:
                self._defaults[path] = then

    def _answer_for(self, path: str) -> Answer:
        with self._changed:
            script = self._scripts[path]
            return script.popleft() if script else self._defaults.get(path, Answer())

    def _record(self, received: Received) -> None:
        with self._changed:
            self._received.append(received)
            self._changed.notify_all()

    def received(self, path: str) -> list[Received]:
        with self._changed:
            return [r for r in self._received if r.path == path]

    def wait_for(self, path: str, count: int, timeout: float = 60,
                 until: Callable[[list[Received]], bool] | None = None) -> list[Received]:
        """The requests to `path` once there are `count` of them (and `until` holds); fails at the deadline."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                got = [r for r in self._received if r.path == path]
                if len(got) >= count and (until is None or until(got)):
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{path}: {len(got)} requests after {timeout} s, expected {count}")
                self._changed.wait(left)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        with self._changed:
            for hold in self._holds:
                hold.set()
        self._server.shutdown()
        self._server.server_close()


@contextlib.contextmanager
def running_receiver() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver
