"""Opaque page tokens (AIP-158): the last sort key seen, bound to the query's filter."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

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
