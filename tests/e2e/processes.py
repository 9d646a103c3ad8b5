"""Which processes a stack left behind."""

from __future__ import annotations

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
    """Those of `processes` still running after `timeout` (an empty list once all are gone)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in processes if _alive(p)]
        if not alive or time.monotonic() > deadline:
            return [_describe(p) for p in alive]
        time.sleep(0.05)  # the kernel tells only a parent when a process ends


def _describe(process: psutil.Process) -> str:
    try:
        return f"{process.pid} {' '.join(process.cmdline()[:4])}"
    except psutil.Error:
        return str(process.pid)
