"""Free local TCP ports for servers that must be told their port up front.

A port the kernel hands out for binding to port 0 comes from the ephemeral range, the same
range every outgoing connection takes its local port from: between picking such a port and the
server binding it, a client socket of any process may take it. Ports are therefore picked below
the ephemeral range, where only servers that ask for a port by number ever land, and checked
free by binding them.
"""

from __future__ import annotations

import contextlib
import random
import socket

_LOWEST = 20000


def _ephemeral_start() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
        return int(ranges.read().split()[0])
    return 32768


def free_ports(count: int) -> list[int]:
    """Distinct ports free now (held open together while they are chosen, so they differ)."""
    highest = _ephemeral_start() - 1
    # Where the ephemeral range starts unusually low, the kernel's own choice is all there is.
    pick = (lambda: random.randint(_LOWEST, highest)) if highest > _LOWEST + 1000 else (lambda: 0)
    sockets: list[socket.socket] = []
    try:
        while len(sockets) < count:
            candidate = socket.socket()
            try:
                candidate.bind(("127.0.0.1", pick()))
            except OSError:
                candidate.close()
                continue
            sockets.append(candidate)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]
