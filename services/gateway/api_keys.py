"""API keys: what a caller of the public API presents, and which tenant it acts for.

A key reads `kiln_<id>_<secret>`: the prefix says what it is (secret scanners and people both
recognise it), the id finds its record, the secret proves it. Only the secret's SHA-256 is
stored, so the key is shown once, when it is created; a revoked key stays listed, refused.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from services.common.database import utc
from services.common.errors import FieldViolation, invalid, not_found
from services.gateway import schema

k = schema.api_keys.c
PREFIX = "kiln_"
_ALPHABET = string.ascii_letters + string.digits
_KEY = re.compile(r"kiln_([0-9a-f]{12})_([A-Za-z0-9]{32})")
_TENANT = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_NO_SECRET = hashlib.sha256(b"").hexdigest()  # compared against when the id is unknown: equal work


@dataclass(frozen=True)
class ApiKey:
    id: str
    tenant: str
    name: str
    create_time: dt.datetime
    revoke_time: dt.datetime | None
    last_use_time: dt.datetime | None

    @property
    def shown(self) -> str:
        """How the key is shown after it was created: its prefix and id, never the secret."""
        return f"{PREFIX}{self.id}_…"


def _key_of(row: Row[Any]) -> ApiKey:
    return ApiKey(row.id, row.tenant, row.name, utc(row.create_time), _maybe(row.revoke_time),
                  _maybe(row.last_use_time))


def _maybe(value: dt.datetime | None) -> dt.datetime | None:
    return utc(value) if value is not None else None


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(conn: Connection, tenant: str, name: str, at: dt.datetime) -> tuple[ApiKey, str]:
    """A new key for `tenant`: its record, and the key itself (shown this once)."""
    violations = []
    if not _TENANT.fullmatch(tenant):
        violations.append(FieldViolation("tenant", "1-63 lowercase letters, digits and dashes, starting with a "
                                                   "letter or digit"))
    if not name.strip() or len(name) > 200:
        violations.append(FieldViolation("name", "1-200 characters, saying what the key is for"))
    if violations:
        raise invalid(violations)
    key_id = secrets.token_hex(6)
    secret = "".join(secrets.choice(_ALPHABET) for _ in range(32))
    conn.execute(schema.api_keys.insert().values(id=key_id, tenant=tenant, name=name.strip(),
                                                 secret_sha256=secret_digest(secret), create_time=at))
    row = conn.execute(sa.select(schema.api_keys).where(k.id == key_id)).one()
    return _key_of(row), f"{PREFIX}{key_id}_{secret}"


def list_keys(conn: Connection, tenant: str | None = None) -> list[ApiKey]:
    query = sa.select(schema.api_keys).order_by(k.tenant, k.create_time, k.id)
    if tenant is not None:
        query = query.where(k.tenant == tenant)
    return [_key_of(row) for row in conn.execute(query)]


def parse_key_id(text: str) -> str:
    """A key's id from the id itself or the key as shown (`kiln_<id>_…`)."""
    key_id = text.removeprefix(PREFIX).split("_", 1)[0]
    if not re.fullmatch(r"[0-9a-f]{12}", key_id):
        raise invalid([FieldViolation("key", "a key id (12 hex digits) or the key as listed: kiln_<id>_…")])
    return key_id


def revoke_key(conn: Connection, key_id: str, at: dt.datetime) -> ApiKey:
    row = conn.execute(sa.select(schema.api_keys).where(k.id == key_id)).first()
    if row is None:
        raise not_found(f"{PREFIX}{key_id}", "API key")
    if row.revoke_time is None:
        conn.execute(schema.api_keys.update().where(k.id == key_id).values(revoke_time=at))
    return _key_of(conn.execute(sa.select(schema.api_keys).where(k.id == key_id)).one())


@dataclass(frozen=True)
class Verified:
    key_id: str
    tenant: str


def verify_key(conn: Connection, presented: str) -> Verified | None:
    """The key's id and tenant when `presented` is a live key; None for anything else, after the
    same work whether the id exists or not."""
    match = _KEY.fullmatch(presented)
    if match is None:
        return None
    key_id, secret = match.groups()
    row = conn.execute(sa.select(k.tenant, k.secret_sha256, k.revoke_time).where(k.id == key_id)).first()
    stored = row.secret_sha256 if row is not None else _NO_SECRET
    if not hmac.compare_digest(stored, secret_digest(secret)) or row is None or row.revoke_time is not None:
        return None
    return Verified(key_id, row.tenant)


def record_use(conn: Connection, key_id: str, at: dt.datetime) -> None:
    conn.execute(schema.api_keys.update().where(k.id == key_id).values(last_use_time=at))
