"""What a call carries to the code that serves it: the tenant it acts for and its deadline.

Interceptors set both before a handler runs (see internal_auth.py and interceptors.py), so
handlers never read metadata themselves. Blocking work started from a call copies the context
into its thread (dependencies.py), so a deadline reaches the SQL and object-store clients too.
Background work that no caller waits for sets a deadline of its own with `deadline_in`.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator
from typing import Any

_TENANT: contextvars.ContextVar[str] = contextvars.ContextVar("kiln_tenant")
# time.monotonic() by which the caller wants its answer; None: the caller set no deadline.
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("kiln_deadline", default=None)


class NoTenant(RuntimeError):
    """Code that needs a tenant ran outside a call that passed the internal-auth interceptor."""


def current_tenant() -> str:
    try:
        return _TENANT.get()
    except LookupError:
        raise NoTenant("no tenant: this code must run inside an authenticated call (or acting_for)") from None


@contextlib.contextmanager
def acting_for(tenant: str) -> Iterator[None]:
    """Run the body as `tenant` (the interceptor uses this; so do tools that call handlers directly)."""
    token = _TENANT.set(tenant)
    try:
        yield
    finally:
        _restore(_TENANT, token)


def deadline() -> float | None:
    return _DEADLINE.get()


def remaining(ceiling: float) -> float:
    """Seconds a dependency call may take: what is left of the caller's deadline, at most `ceiling`."""
    limit = _DEADLINE.get()
    if limit is None:
        return ceiling
    return max(0.0, min(ceiling, limit - time.monotonic()))


def caller_deadline_passed() -> bool:
    limit = _DEADLINE.get()
    return limit is not None and time.monotonic() >= limit


def deadline_in(seconds: float | None) -> contextlib.AbstractContextManager[None]:
    """Run the body with a deadline `seconds` from now (None: no deadline), never later than an
    enclosing one."""
    return deadline_at(None if seconds is None else time.monotonic() + seconds)


@contextlib.contextmanager
def deadline_at(limit: float | None) -> Iterator[None]:
    """Run the body with a deadline at time.monotonic() `limit`, never later than an enclosing one."""
    outer = _DEADLINE.get()
    if outer is not None and (limit is None or outer < limit):
        limit = outer
    token = _DEADLINE.set(limit)
    try:
        yield
    finally:
        _restore(_DEADLINE, token)


def _restore(var: contextvars.ContextVar[Any], token: contextvars.Token[Any]) -> None:
    # A streaming handler whose client went away is closed by the event loop's generator finalizer,
    # in a context of its own: the value was never set there, so there is nothing to undo.
    with contextlib.suppress(ValueError):
        var.reset(token)
