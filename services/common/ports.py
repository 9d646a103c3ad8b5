"""Free local TCP ports for servers that must be told their port up front."""

from __future__ import annotations

import socket


def free_ports(count: int) -> list[int]:
    """Distinct ports the kernel reports free (held open together so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]
