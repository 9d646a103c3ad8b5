"""Pagination (AIP-158): keyset pages over (create_time, id) and opaque tokens
holding the last key seen, bound to the query they came from.

Tokens are signed: a client can only hand back a key this service issued, so a
key never reaches SQL unless the service itself produced it. The signing secret
is `page_token_secret` from the settings, or else the object-store secret key,
which every replica serving the same data already shares: a token issued by one
replica is honoured by the others without any extra setting.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from services.common.errors import ServiceError, invalid_field
from services.common.settings import CommonSettings

_SIGNATURE_BYTES = 16
_KEY_LABEL = b"kiln page tokens v1"


def filter_digest(filter_key: str) -> str:
    """What a token records of the query it belongs to."""
    return hashlib.sha256(filter_key.encode()).hexdigest()[:16]


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode((text + "=" * (-len(text) % 4)).encode())


def _not_issued() -> ServiceError:
    return invalid_field("page_token", "not a token this service issued; start again without a page_token",
                         "INVALID_PAGE_TOKEN")


def _is_scalar(value: Any) -> bool:
    # bool is an int to Python but never a key we issue.
    return isinstance(value, str | int) and not isinstance(value, bool)


def page_size(requested: int, default: int, maximum: int) -> int:
    if requested < 0:
        raise invalid_field("page_size", "must not be negative")
    return min(requested or default, maximum)


class PageTokens:
    """Issues and checks the page tokens of one service; every replica needs the same secret."""

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("page tokens need a secret")
        # Derived, so a token's signature says nothing usable about the secret it came from.
        self._key = hmac.new(secret.encode(), _KEY_LABEL, hashlib.sha256).digest()

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> PageTokens:
        return cls(settings.page_token_secret.get_secret_value() or settings.s3.secret_key.get_secret_value())

    def _signature(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:_SIGNATURE_BYTES]

    def encode(self, last_key: list[Any], filter_key: str) -> str:
        payload = json.dumps({"k": last_key, "f": filter_digest(filter_key)}, separators=(",", ":")).encode()
        return f"{_b64encode(payload)}.{_b64encode(self._signature(payload))}"

    def decode(self, token: str, filter_key: str, length: int | None = None) -> list[Any] | None:
        """The last key of the previous page, or None for the first page.

        The key is a list of strings and integers: exactly `length` of them when
        given, at least one otherwise."""
        if not token:
            return None
        try:
            encoded_payload, encoded_signature = token.split(".")
            payload = _b64decode(encoded_payload)
            if not hmac.compare_digest(_b64decode(encoded_signature), self._signature(payload)):
                raise _not_issued()
            fields = json.loads(payload)
            key, digest = fields["k"], fields["f"]
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise _not_issued() from exc
        if digest != filter_digest(filter_key):
            raise invalid_field("page_token", "belongs to a different query; start again without a page_token",
                                "INVALID_PAGE_TOKEN")
        if (not isinstance(key, list) or not key or (length is not None and len(key) != length)
                or not all(_is_scalar(part) for part in key)):
            raise _not_issued()
        return key

    def _keyset_after(self, page_token: str, query_key: str) -> tuple[dt.datetime, str] | None:
        """(create_time, id) of the previous page's last row; ids are text in every table paged this way."""
        after = self.decode(page_token, query_key, length=2)
        if after is None:
            return None
        last_time, last_id = after
        if not isinstance(last_time, str) or not isinstance(last_id, str):
            raise _not_issued()
        try:
            return dt.datetime.fromisoformat(last_time), last_id
        except ValueError as exc:
            raise _not_issued() from exc

    def keyset_page(self, conn: Connection, query: sa.Select[Any], time_column: sa.ColumnElement[Any],
                    id_column: sa.ColumnElement[Any], page_token: str, size: int,
                    query_key: str) -> tuple[list[Row[Any]], str]:
        """One page of `query` ordered by (time, id), and the token for the next page ("" at the end)."""
        after = self._keyset_after(page_token, query_key)
        if after is not None:
            query = query.where(sa.tuple_(time_column, id_column) > after)
        rows = list(conn.execute(query.order_by(time_column, id_column).limit(size + 1)).all())
        if len(rows) <= size:
            return rows, ""
        last = rows[size - 1]
        return rows[:size], self.encode([last._mapping[time_column].isoformat(), last._mapping[id_column]], query_key)
