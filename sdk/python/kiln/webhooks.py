"""Verify a webhook Kiln sent (Standard Webhooks signatures, with the `standardwebhooks` package).

    from kiln.webhooks import verify, WebhookVerificationError

    try:
        event = verify(request.body, request.headers, os.environ["KILN_WEBHOOK_SECRET"])
    except WebhookVerificationError as exc:
        return 400, str(exc)
    if already_seen(request.headers["webhook-id"]):   # retries carry the same id
        return 200
    handle(event["type"], event["data"])              # e.g. "training.succeeded", {"name": "trainingJobs/…"}

Pass the body exactly as received (bytes, before any JSON parsing). While a secret rotation
overlaps, pass both secrets: a delivery signed by either is accepted.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from standardwebhooks.webhooks import Webhook

__all__ = ["BadSignature", "MissingHeaders", "StaleTimestamp", "WebhookVerificationError", "verify"]


class WebhookVerificationError(Exception):
    """The request is not a genuine, fresh delivery: answer it with a 4xx and ignore it."""


class MissingHeaders(WebhookVerificationError):
    """webhook-id, webhook-timestamp or webhook-signature is missing or malformed."""


class StaleTimestamp(WebhookVerificationError):
    """The signed timestamp is too far from now: a replayed (or badly delayed) request."""


class BadSignature(WebhookVerificationError):
    """No signature matches the body under any of the secrets: tampered, or another secret."""


def verify(body: bytes, headers: Mapping[str, str], secret: str | Sequence[str],
           tolerance_seconds: float = 300) -> dict[str, Any]:
    """The delivery's JSON payload (`{"type", "timestamp", "data"}`) once its signature and
    timestamp check out; raises a WebhookVerificationError saying what did not."""
    secrets = [secret] if isinstance(secret, str) else list(secret)
    if not secrets or not all(secrets):
        raise ValueError("give the endpoint's signing secret (whsec_…), or a list of them")
    lowered = {key.lower(): value for key, value in headers.items()}
    event_id = lowered.get("webhook-id", "")
    stamp = lowered.get("webhook-timestamp", "")
    signatures = lowered.get("webhook-signature", "")
    missing = [name for name, value in (("webhook-id", event_id), ("webhook-timestamp", stamp),
                                        ("webhook-signature", signatures)) if not value]
    if missing:
        raise MissingHeaders(f"missing header(s): {', '.join(missing)}")
    try:
        sent = int(stamp)
    except ValueError:
        raise MissingHeaders(f"webhook-timestamp is not Unix seconds: {stamp[:40]!r}") from None
    age = time.time() - sent
    if age > tolerance_seconds:
        raise StaleTimestamp(f"signed {age:.0f} s ago, more than the {tolerance_seconds:g} s allowed: a replay?")
    if age < -tolerance_seconds:
        raise StaleTimestamp(f"signed {-age:.0f} s in the future, more than the {tolerance_seconds:g} s allowed")
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise BadSignature("the body is not the UTF-8 JSON that was signed") from None
    offered = [part.split(",", 1)[1].encode() for part in signatures.split() if part.startswith("v1,")]
    at = dt.datetime.fromtimestamp(sent, dt.UTC)
    for key in secrets:
        expected = Webhook(key).sign(event_id, at, text).split(",", 1)[1].encode()
        if any(hmac.compare_digest(expected, candidate) for candidate in offered):
            payload: dict[str, Any] = json.loads(text)
            return payload
    raise BadSignature("no signature matches the body with the secret(s) given: a tampered body or another "
                       "endpoint's secret?")
