"""Waiting in tests for another process's state, read through its API: a deadline-bounded poll."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout: float = 60, interval: float = 0.1) -> T:
    """`check()`'s first truthy answer, asked until the deadline (a condition of another process's
    state, read through its API)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not so after {timeout} s: {check}")
        time.sleep(interval)
