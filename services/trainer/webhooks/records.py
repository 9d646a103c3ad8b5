"""Endpoints and deliveries as records and as messages; their names."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import sqlalchemy as sa
from google.protobuf.duration_pb2 import Duration
from sqlalchemy.engine import Connection, Row

from kiln.v1 import webhooks_pb2 as pb
from services.common.errors import invalid_field, not_found
from services.trainer import schema
from services.trainer.records import timestamp
from services.trainer.webhooks.outbox import FAILED, PENDING, SUCCEEDED

ENDPOINT_PREFIX = "webhookEndpoints/"
_ENDPOINT = re.compile(r"webhookEndpoints/([0-9a-f]{1,32})")
_DELIVERY = re.compile(r"webhookEndpoints/([0-9a-f]{1,32})/deliveries/([0-9a-f]{1,32})")
_STATES = {PENDING: pb.WebhookDelivery.State.STATE_PENDING, SUCCEEDED: pb.WebhookDelivery.State.STATE_SUCCEEDED,
           FAILED: pb.WebhookDelivery.State.STATE_FAILED}
e = schema.webhook_endpoints.c
d = schema.webhook_deliveries.c
s = schema.webhook_secrets.c


def endpoint_name(endpoint_id: str) -> str:
    return ENDPOINT_PREFIX + endpoint_id


def delivery_name(endpoint_id: str, delivery_id: str) -> str:
    return f"{ENDPOINT_PREFIX}{endpoint_id}/deliveries/{delivery_id}"


def parse_endpoint(name: str, field: str = "name") -> str:
    match = _ENDPOINT.fullmatch(name)
    if match is None:
        raise invalid_field(field, "a webhook endpoint's name: webhookEndpoints/{id}")
    return match.group(1)


def parse_delivery(name: str, field: str = "name") -> tuple[str, str]:
    match = _DELIVERY.fullmatch(name)
    if match is None:
        raise invalid_field(field, "a delivery's name: webhookEndpoints/{endpoint}/deliveries/{id}")
    return match.group(1), match.group(2)


def get_endpoint(conn: Connection, tenant: str, endpoint_id: str) -> Row[Any]:
    """The tenant's endpoint; another tenant's is as absent as one that never existed."""
    row = conn.execute(sa.select(schema.webhook_endpoints).where(e.id == endpoint_id, e.tenant == tenant)).first()
    if row is None:
        raise not_found(endpoint_name(endpoint_id), "webhook endpoint")
    return row


def get_delivery(conn: Connection, tenant: str, endpoint_id: str, delivery_id: str) -> Row[Any]:
    row = conn.execute(sa.select(schema.webhook_deliveries).where(
        d.id == delivery_id, d.endpoint_id == endpoint_id, d.tenant == tenant)).first()
    if row is None:
        raise not_found(delivery_name(endpoint_id, delivery_id), "webhook delivery")
    return row


def previous_secret_expiry(conn: Connection, endpoint_id: str, at: dt.datetime) -> dt.datetime | None:
    return conn.execute(sa.select(sa.func.max(s.expire_time)).where(
        s.endpoint_id == endpoint_id, s.expire_time > at)).scalar_one_or_none()


def endpoint_message(row: Row[Any], previous_expiry: dt.datetime | None = None, secret: str = "") -> pb.WebhookEndpoint:
    message = pb.WebhookEndpoint(name=endpoint_name(row.id), url=row.url, event_types=list(row.event_types),
                                 description=row.description, enabled=row.enabled,
                                 disabled_reason=row.disabled_reason, secret=secret)
    for field, value in (("disable_time", row.disable_time), ("last_success_time", row.last_success_time),
                         ("create_time", row.create_time), ("update_time", row.update_time),
                         ("previous_secret_expire_time", previous_expiry)):
        stamp = timestamp(value)
        if stamp is not None:
            getattr(message, field).CopyFrom(stamp)
    return message


def delivery_message(row: Row[Any]) -> pb.WebhookDelivery:
    latency = Duration()
    latency.FromNanoseconds(int(row.latency_ms * 1_000_000))
    message = pb.WebhookDelivery(
        name=delivery_name(row.endpoint_id, row.id), event_id=row.event_id, event_type=row.event_type,
        state=_STATES[row.state], attempt_count=row.attempts, status_code=row.status_code, error=row.error or "",
        payload=row.payload)
    if row.attempts:
        message.latency.CopyFrom(latency)
    fields: list[tuple[str, Any]] = [("last_attempt_time", row.last_attempt_time), ("create_time", row.create_time)]
    if row.state == PENDING:
        fields.append(("next_attempt_time", row.due))
    for field, value in fields:
        stamp = timestamp(value)
        if stamp is not None:
            getattr(message, field).CopyFrom(stamp)
    return message
