"""Which processes a stack left behind."""

from __future__ import annotations

import os
import select
import time

import psutil


def tree(pids: list[int]) -> list[psutil.Process]:
    """The processes `pids` and everything below them, as they are now."""
    found: list[psutil.Process] = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            found += [process, *process.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    return found


def _alive(process: psutil.Process) -> bool:
    try:
        # A killed orphan may stay a zombie: this machine's init doesn't always reap.
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def survivors(processes: list[psutil.Process], timeout: float = 30.0) -> list[str]:
    """Those of `processes` still running after `timeout` (an empty list once all are gone). Each is
    watched through a pidfd, which becomes readable when the process ends: none of them is our
    child, so waiting on their exit needs no polling."""
    deadline = time.monotonic() + timeout
    watched: dict[int, psutil.Process] = {}
    poller = select.poll()
    for process in processes:
        if not _alive(process):
            continue
        try:
            fd = os.pidfd_open(process.pid)
        except ProcessLookupError:
            continue
        watched[fd] = process
        poller.register(fd, select.POLLIN)
    try:
        while watched and (left := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(left * 1000):
                poller.unregister(fd)
                os.close(fd)
                del watched[fd]
    finally:
        for fd in watched:
            os.close(fd)
    return [_describe(p) for p in watched.values() if _alive(p)]


def _describe(process: psutil.Process) -> str:
    try:
        return f"{process.pid} {' '.join(process.cmdline()[:4])}"
    except psutil.Error:
        return str(process.pid)
