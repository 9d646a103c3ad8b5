"""Which failures mean "a dependency is down", so callers hear UNAVAILABLE and retry.

A refused connection, a reset, a timeout or a 5xx from the object store says nothing about the
request: the same call can succeed once the dependency is back. Such failures become
UNAVAILABLE with an ErrorInfo naming the dependency and a RetryInfo; anything else unexpected
stays INTERNAL.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import sqlalchemy as sa
import urllib3.exceptions
from minio.error import S3Error, ServerError

from services.common.errors import ServiceError, deadline_exceeded, unavailable

DATABASE = "database"
OBJECT_STORE = "object store"
# S3 error codes that describe the server's state, not the request.
_S3_BUSY_CODES = {"ServiceUnavailable", "SlowDown", "InternalError", "RequestTimeout", "ServerBusy"}


class DependencyUnavailable(Exception):
    """A dependency failed or did not answer within its ceiling."""

    def __init__(self, dependency: str, detail: str) -> None:
        super().__init__(f"the {dependency} is unavailable: {detail}")
        self.dependency = dependency
        self.detail = detail


class DependencyDeadline(Exception):
    """The caller's deadline passed while a dependency call was still running."""

    def __init__(self, dependency: str) -> None:
        super().__init__(f"the caller's deadline passed while waiting for the {dependency}")
        self.dependency = dependency


def failed_dependency(exc: BaseException) -> str | None:
    """The dependency whose outage `exc` (or an exception it wraps) reports, or None."""
    for cause in _chain(exc):
        if isinstance(cause, DependencyUnavailable | DependencyDeadline):
            return cause.dependency
        if isinstance(cause, sa.exc.DBAPIError) and cause.connection_invalidated:
            return DATABASE
        if isinstance(cause, sa.exc.InterfaceError | sa.exc.TimeoutError):
            return DATABASE
        # SQLite reports a missing table as an OperationalError too: only a busy or unreadable
        # file is an outage there. PostgreSQL drivers keep this class for the connection.
        if isinstance(cause, sa.exc.OperationalError) and (
                not isinstance(cause.orig, sqlite3.Error) or _sqlite_outage(cause.orig)):
            return DATABASE
        if isinstance(cause, sqlite3.OperationalError) and _sqlite_outage(cause):
            return DATABASE
        if isinstance(cause, urllib3.exceptions.HTTPError | ServerError):
            return OBJECT_STORE
        if isinstance(cause, S3Error) and cause.code in _S3_BUSY_CODES:
            return OBJECT_STORE
    return None


def outage_error(exc: BaseException) -> ServiceError | None:
    """The status to answer for an outage, or None when `exc` is not one."""
    for cause in _chain(exc):
        if isinstance(cause, DependencyDeadline):
            return deadline_exceeded(cause.dependency)
    dependency = failed_dependency(exc)
    if dependency is None:
        return None
    return unavailable(dependency, f"the {dependency} is unavailable; retry shortly")


def _sqlite_outage(exc: sqlite3.Error) -> bool:
    text = str(exc)
    return any(sign in text for sign in ("locked", "busy", "disk I/O", "unable to open"))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        # `raise … from None` says the earlier exception is not what went wrong.
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
