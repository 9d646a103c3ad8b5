"""Pagination (AIP-158): keyset pages over (create_time, id) and opaque tokens
holding the last key seen, bound to the query they came from."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from services.common.errors import invalid_field


def _filter_digest(filter_key: str) -> str:
    return hashlib.sha256(filter_key.encode()).hexdigest()[:16]


def encode_token(last_key: list[Any], filter_key: str) -> str:
    payload = json.dumps({"k": last_key, "f": _filter_digest(filter_key)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_token(token: str, filter_key: str) -> list[Any] | None:
    """The last key of the previous page, or None for the first page."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        key, digest = payload["k"], payload["f"]
    except (ValueError, KeyError, TypeError) as exc:
        raise invalid_field("page_token", "not a token this service issued") from exc
    if digest != _filter_digest(filter_key) or not isinstance(key, list):
        raise invalid_field("page_token", "belongs to a different query; start again without a page_token")
    return key


def page_size(requested: int, default: int, maximum: int) -> int:
    if requested < 0:
        raise invalid_field("page_size", "must not be negative")
    return min(requested or default, maximum)


def keyset_page(conn: Connection, query: sa.Select[Any], time_column: sa.ColumnElement[Any],
                id_column: sa.ColumnElement[Any], page_token: str, size: int,
                query_key: str) -> tuple[list[Row[Any]], str]:
    """One page of `query` ordered by (time, id), and the token for the next page ("" at the end)."""
    after = decode_token(page_token, query_key)
    if after is not None:
        try:
            last_time = dt.datetime.fromisoformat(after[0])
        except (TypeError, ValueError, IndexError) as exc:
            raise invalid_field("page_token", "not a token this service issued") from exc
        query = query.where(sa.tuple_(time_column, id_column) > (last_time, after[1]))
    rows = list(conn.execute(query.order_by(time_column, id_column).limit(size + 1)).all())
    if len(rows) <= size:
        return rows, ""
    last = rows[size - 1]
    return rows[:size], encode_token([last._mapping[time_column].isoformat(), last._mapping[id_column]], query_key)
