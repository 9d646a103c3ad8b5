"""Signing secrets and signatures, with the `standardwebhooks` package: `whsec_` + base64 of 24
random bytes; `webhook-signature` carries `v1,<base64>` for each secret still signing."""

from __future__ import annotations

import base64
import datetime as dt
import secrets
from collections.abc import Sequence

from standardwebhooks.webhooks import Webhook

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def signature_header(secrets_: Sequence[str], event_id: str, at: dt.datetime, body: str) -> str:
    """Space-separated signatures, the newest secret's first (receivers accept any that matches)."""
    return " ".join(Webhook(secret).sign(event_id, at, body) for secret in secrets_)


def headers(secrets_: Sequence[str], event_id: str, at: dt.datetime, body: str) -> dict[str, str]:
    return {"webhook-id": event_id, "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": signature_header(secrets_, event_id, at, body),
            "content-type": "application/json", "user-agent": "Kiln-Webhooks/1"}
