"""Idempotent writes (AIP-155): a request_id remembers the response it produced.

The record is written in the same transaction as the change it guards, so a
retry either sees the whole first answer or none of it. The same request_id
with another body is refused: the client has a bug, and replaying the first
answer would hide it.

A retry may arrive while its first attempt is still running. On SQLite the
write transactions are serialised from their start (BEGIN IMMEDIATE); on
PostgreSQL each lookup first takes a transaction-scoped advisory lock on the
request id, so the retry waits for the first attempt to commit and then
replays its answer instead of redoing (or tripping over) its work.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import TypeVar

import sqlalchemy as sa
from google.protobuf.message import Message
from sqlalchemy.engine import Connection

from services.common.errors import FieldViolation, already_exists, invalid_field

MAX_REQUEST_ID_LENGTH = 128
ResponseT = TypeVar("ResponseT", bound=Message)


def idempotency_table(metadata: sa.MetaData, name: str) -> sa.Table:
    """Each service names its own table: services may share one database."""
    return sa.Table(
        name,
        metadata,
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("method", sa.String(64), primary_key=True),
        sa.Column("request_id", sa.String(MAX_REQUEST_ID_LENGTH), primary_key=True),
        sa.Column("body_sha256", sa.String(64), nullable=False),
        sa.Column("response", sa.LargeBinary, nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    )


def request_fingerprint(request: Message) -> str:
    """sha256 of the request without its request_id, in deterministic wire form."""
    copy = type(request)()
    copy.CopyFrom(request)
    if "request_id" in copy.DESCRIPTOR.fields_by_name:
        copy.ClearField("request_id")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def check_request_id(request_id: str, field: str = "request_id") -> None:
    if len(request_id) > MAX_REQUEST_ID_LENGTH:
        raise invalid_field(field, f"at most {MAX_REQUEST_ID_LENGTH} characters")
    if request_id and not request_id.isprintable():
        raise invalid_field(field, "must be printable text (a UUID is recommended)")


class IdempotencyKeys:
    def __init__(self, table: sa.Table) -> None:
        self.table = table
        # Built once: every write looks up and records its request id.
        c = table.c
        self._lookup = sa.select(c.body_sha256, c.response).where(
            c.tenant == sa.bindparam("tenant"), c.method == sa.bindparam("method"),
            c.request_id == sa.bindparam("request_id"))
        self._insert = table.insert()

    def replay(self, conn: Connection, tenant: str, method: str, request_id: str, fingerprint: str,
               response_type: type[ResponseT]) -> ResponseT | None:
        """The stored answer to this request, or None when it is new."""
        if not request_id:
            return None
        self._serialise(conn, tenant, method, request_id)
        row = conn.execute(self._lookup, {"tenant": tenant, "method": method, "request_id": request_id}).first()
        if row is None:
            return None
        if row.body_sha256 != fingerprint:
            raise already_exists(
                f"request_id {request_id!r} was already used for a different {method} request; "
                "use a new request_id for a new request",
                "REQUEST_ID_REUSED",
                [FieldViolation("request_id", "already used with a different request body", "REQUEST_ID_REUSED")],
            )
        return response_type.FromString(row.response)

    def _serialise(self, conn: Connection, tenant: str, method: str, request_id: str) -> None:
        if conn.dialect.name != "postgresql":
            return
        # 64 bits of a hash: two ids that collide only wait for each other, which is harmless.
        name = "\0".join((self.table.name, tenant, method, request_id)).encode()
        key = int.from_bytes(hashlib.sha256(name).digest()[:8], "big", signed=True)
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))

    def remember(self, conn: Connection, tenant: str, method: str, request_id: str, fingerprint: str,
                 response: Message) -> None:
        if not request_id:
            return
        conn.execute(self._insert, {
            "tenant": tenant, "method": method, "request_id": request_id, "body_sha256": fingerprint,
            "response": response.SerializeToString(), "create_time": dt.datetime.now(dt.UTC),
        })
