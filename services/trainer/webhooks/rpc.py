"""The WebhookService handlers: endpoints, secrets and deliveries, each scoped to the caller's tenant."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import grpc
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from kiln.v1 import webhooks_pb2 as pb
from kiln.v1 import webhooks_pb2_grpc
from services.common.call_context import current_tenant
from services.common.errors import (
    FieldViolation,
    failed_precondition,
    invalid,
    invalid_field,
    parsed,
    quota_exceeded,
    unary_errors,
)
from services.common.idempotency import check_request_id
from services.common.pagination import PageTokens, page_size
from services.common.transactions import Transactions
from services.trainer.records import new_id, now
from services.trainer.schema import webhook_deliveries, webhook_endpoints, webhook_secrets
from services.trainer.webhooks import events, records
from services.trainer.webhooks.addresses import AddressPolicy, RefusedAddress, parse_url
from services.trainer.webhooks.outbox import PENDING, Outbox
from services.trainer.webhooks.settings import WebhookSettings
from services.trainer.webhooks.signing import new_secret

e = webhook_endpoints.c
d = webhook_deliveries.c
s = webhook_secrets.c
MAX_DESCRIPTION = 1000
DEFAULT_OVERLAP = dt.timedelta(hours=24)
MAX_OVERLAP = dt.timedelta(days=7)
UPDATABLE = ("url", "event_types", "description", "enabled")


class WebhookRpcs(webhooks_pb2_grpc.WebhookServiceServicer):
    def __init__(self, transactions: Transactions, page_tokens: PageTokens, settings: WebhookSettings,
                 policy: AddressPolicy, outbox: Outbox) -> None:
        self._tx = transactions
        self._page_tokens = page_tokens
        self._settings = settings
        self._policy = policy
        self._outbox = outbox

    async def _check_url(self, url: str, field: str) -> list[FieldViolation]:
        try:
            await self._policy.resolve(parse_url(url))
        except RefusedAddress as exc:
            return [FieldViolation(field, str(exc))]
        return []

    @staticmethod
    def _check_event_types(types: list[str], field: str) -> list[FieldViolation]:
        if not types:
            return [FieldViolation(field, "name at least one of " + ", ".join(events.EVENT_TYPES))]
        bad = [FieldViolation(f"{field}[{i}]", "one of " + ", ".join(events.EVENT_TYPES))
               for i, name in enumerate(types) if name not in events.EVENT_TYPES]
        if len(set(types)) != len(types):
            bad.append(FieldViolation(field, "each event type once"))
        return bad

    @staticmethod
    def _check_description(text: str, field: str) -> list[FieldViolation]:
        if len(text) > MAX_DESCRIPTION or not all(c.isprintable() or c in "\n\t" for c in text):
            return [FieldViolation(field, f"at most {MAX_DESCRIPTION} printable characters")]
        return []

    @unary_errors
    async def CreateWebhookEndpoint(self, request: pb.CreateWebhookEndpointRequest,
                                    context: grpc.aio.ServicerContext) -> pb.WebhookEndpoint:
        request = parsed(request)
        check_request_id(request.request_id)
        spec = request.webhook_endpoint
        tenant = current_tenant()
        if request.request_id:
            earlier = await self._tx.run(lambda conn: self._tx.replay(
                conn, tenant, "CreateWebhookEndpoint", request, pb.WebhookEndpoint), read_only=True)
            if earlier is not None:
                return earlier
        violations = (await self._check_url(spec.url, "webhook_endpoint.url")
                      + self._check_event_types(list(spec.event_types), "webhook_endpoint.event_types")
                      + self._check_description(spec.description, "webhook_endpoint.description"))
        if violations:
            raise invalid(violations)
        limit = self._settings.max_webhook_endpoints_per_tenant

        def work(conn: Connection, tenant: str) -> pb.WebhookEndpoint:
            lock_tenant_endpoints(conn, tenant)
            count = conn.execute(sa.select(sa.func.count()).where(e.tenant == tenant)).scalar_one()
            if count >= limit:
                raise quota_exceeded(f"at most {limit} webhook endpoints per tenant; delete one first",
                                     "WEBHOOK_ENDPOINTS_PER_TENANT", subject=f"tenant:{tenant}",
                                     description="max_webhook_endpoints_per_tenant", limit=str(limit))
            at = now()
            endpoint_id = new_id()
            secret = new_secret()
            conn.execute(webhook_endpoints.insert().values(
                id=endpoint_id, tenant=tenant, url=spec.url, event_types=list(spec.event_types),
                description=spec.description, enabled=True, disabled_reason="", create_time=at, update_time=at))
            conn.execute(webhook_secrets.insert().values(endpoint_id=endpoint_id, id=new_id(), secret=secret,
                                                         create_time=at))
            return records.endpoint_message(records.get_endpoint(conn, tenant, endpoint_id), secret=secret)

        return await self._tx.idempotent("CreateWebhookEndpoint", request, pb.WebhookEndpoint, work)

    def _message(self, conn: Connection, tenant: str, endpoint_id: str, secret: str = "") -> pb.WebhookEndpoint:
        row = records.get_endpoint(conn, tenant, endpoint_id)
        return records.endpoint_message(row, records.previous_secret_expiry(conn, endpoint_id, now()), secret)

    @unary_errors
    async def GetWebhookEndpoint(self, request: pb.GetWebhookEndpointRequest,
                                 context: grpc.aio.ServicerContext) -> pb.WebhookEndpoint:
        endpoint_id = records.parse_endpoint(parsed(request).name)
        tenant = current_tenant()
        return await self._tx.run(lambda conn: self._message(conn, tenant, endpoint_id), read_only=True)

    @unary_errors
    async def ListWebhookEndpoints(self, request: pb.ListWebhookEndpointsRequest,
                                   context: grpc.aio.ServicerContext) -> pb.ListWebhookEndpointsResponse:
        request = parsed(request)
        tenant = current_tenant()
        size = page_size(request.page_size, 20, 100)

        def read(conn: Connection) -> pb.ListWebhookEndpointsResponse:
            rows, token = self._page_tokens.keyset_page(
                conn, sa.select(webhook_endpoints).where(e.tenant == tenant), e.create_time, e.id,
                request.page_token, size, f"webhookEndpoints:{tenant}")
            at = now()
            return pb.ListWebhookEndpointsResponse(
                webhook_endpoints=[records.endpoint_message(r, records.previous_secret_expiry(conn, r.id, at))
                                   for r in rows], next_page_token=token)

        return await self._tx.run(read, read_only=True)

    @unary_errors
    async def UpdateWebhookEndpoint(self, request: pb.UpdateWebhookEndpointRequest,
                                    context: grpc.aio.ServicerContext) -> pb.WebhookEndpoint:
        request = parsed(request)
        check_request_id(request.request_id)
        spec = request.webhook_endpoint
        endpoint_id = records.parse_endpoint(spec.name, "webhook_endpoint.name")
        paths = list(request.update_mask.paths)
        violations = [FieldViolation(f"update_mask.paths[{i}]", "one of " + ", ".join(UPDATABLE))
                      for i, path in enumerate(paths) if path not in UPDATABLE]
        if not paths:
            violations.append(FieldViolation("update_mask", "name the fields to change: " + ", ".join(UPDATABLE)))
        if "url" in paths:
            violations += await self._check_url(spec.url, "webhook_endpoint.url")
        if "event_types" in paths:
            violations += self._check_event_types(list(spec.event_types), "webhook_endpoint.event_types")
        if "description" in paths:
            violations += self._check_description(spec.description, "webhook_endpoint.description")
        if violations:
            raise invalid(violations)

        def work(conn: Connection, tenant: str) -> pb.WebhookEndpoint:
            row = records.get_endpoint(conn, tenant, endpoint_id)
            at = now()
            values: dict[str, Any] = {"update_time": at}
            if "url" in paths:
                values["url"] = spec.url
            if "event_types" in paths:
                values["event_types"] = list(spec.event_types)
            if "description" in paths:
                values["description"] = spec.description
            if "enabled" in paths and spec.enabled != row.enabled:
                values["enabled"] = spec.enabled
                # Re-enabled: why it was disabled no longer holds. Disabled by a user: no reason to give.
                values["disabled_reason"] = ""
                values["disable_time"] = None if spec.enabled else at
            conn.execute(webhook_endpoints.update().where(e.id == endpoint_id).values(values))
            return self._message(conn, tenant, endpoint_id)

        return await self._tx.idempotent("UpdateWebhookEndpoint", request, pb.WebhookEndpoint, work)

    @unary_errors
    async def DeleteWebhookEndpoint(self, request: pb.DeleteWebhookEndpointRequest,
                                    context: grpc.aio.ServicerContext) -> pb.DeleteWebhookEndpointResponse:
        request = parsed(request)
        endpoint_id = records.parse_endpoint(request.name)

        def work(conn: Connection, tenant: str) -> pb.DeleteWebhookEndpointResponse:
            records.get_endpoint(conn, tenant, endpoint_id)
            conn.execute(webhook_deliveries.delete().where(d.endpoint_id == endpoint_id))
            conn.execute(webhook_secrets.delete().where(s.endpoint_id == endpoint_id))
            conn.execute(webhook_endpoints.delete().where(e.id == endpoint_id))
            return pb.DeleteWebhookEndpointResponse()

        return await self._tx.idempotent("DeleteWebhookEndpoint", request, pb.DeleteWebhookEndpointResponse, work)

    @unary_errors
    async def RotateWebhookSecret(self, request: pb.RotateWebhookSecretRequest,
                                  context: grpc.aio.ServicerContext) -> pb.WebhookEndpoint:
        request = parsed(request)
        endpoint_id = records.parse_endpoint(request.name)
        overlap = request.overlap.ToTimedelta() if request.HasField("overlap") else DEFAULT_OVERLAP
        if not dt.timedelta(0) <= overlap <= MAX_OVERLAP:
            raise invalid_field("overlap", "from 0 to 7 days (unset: 24 hours)")

        def work(conn: Connection, tenant: str) -> pb.WebhookEndpoint:
            records.get_endpoint(conn, tenant, endpoint_id)
            at = now()
            conn.execute(webhook_secrets.delete().where(s.endpoint_id == endpoint_id, s.expire_time <= at))
            # Every earlier secret signs for the overlap at most: a rotation with none (a secret
            # that leaked) also ends the overlap of the rotation before it.
            ends = at + overlap
            conn.execute(webhook_secrets.update().where(
                s.endpoint_id == endpoint_id, sa.or_(s.expire_time.is_(None), s.expire_time > ends))
                .values(expire_time=ends))
            secret = new_secret()
            conn.execute(webhook_secrets.insert().values(endpoint_id=endpoint_id, id=new_id(), secret=secret,
                                                         create_time=at))
            conn.execute(webhook_endpoints.update().where(e.id == endpoint_id).values(update_time=at))
            return self._message(conn, tenant, endpoint_id, secret)

        return await self._tx.idempotent("RotateWebhookSecret", request, pb.WebhookEndpoint, work)

    @unary_errors
    async def ListWebhookDeliveries(self, request: pb.ListWebhookDeliveriesRequest,
                                    context: grpc.aio.ServicerContext) -> pb.ListWebhookDeliveriesResponse:
        request = parsed(request)
        endpoint_id = records.parse_endpoint(request.parent, "parent")
        tenant = current_tenant()
        size = page_size(request.page_size, 20, 100)
        query_key = f"webhookDeliveries:{tenant}:{endpoint_id}"
        after = self._page_tokens.decode(request.page_token, query_key, length=2)

        def read(conn: Connection) -> pb.ListWebhookDeliveriesResponse:
            records.get_endpoint(conn, tenant, endpoint_id)
            query = sa.select(webhook_deliveries).where(d.endpoint_id == endpoint_id, d.tenant == tenant)
            if after is not None:
                query = query.where(sa.tuple_(d.create_time, d.id) < (dt.datetime.fromisoformat(after[0]), after[1]))
            rows = list(conn.execute(query.order_by(d.create_time.desc(), d.id.desc()).limit(size + 1)))
            token = ""
            if len(rows) > size:
                rows = rows[:size]
                token = self._page_tokens.encode([rows[-1].create_time.isoformat(), rows[-1].id], query_key)
            return pb.ListWebhookDeliveriesResponse(deliveries=[records.delivery_message(r) for r in rows],
                                                    next_page_token=token)

        return await self._tx.run(read, read_only=True)

    @unary_errors
    async def ReplayWebhookDelivery(self, request: pb.ReplayWebhookDeliveryRequest,
                                    context: grpc.aio.ServicerContext) -> pb.WebhookDelivery:
        request = parsed(request)
        endpoint_id, delivery_id = records.parse_delivery(request.name)

        def work(conn: Connection, tenant: str) -> pb.WebhookDelivery:
            delivery = records.get_delivery(conn, tenant, endpoint_id, delivery_id)
            _require_enabled(records.get_endpoint(conn, tenant, endpoint_id))
            at = now()
            # A new claim stamp fences off an attempt still in flight: its outcome is not recorded.
            # A replay is a fresh delivery of the same event: the whole retry schedule again.
            conn.execute(webhook_deliveries.update().where(d.id == delivery.id).values(
                state=PENDING, due=at, claimed_at=None, attempts=0, error=None))
            self._outbox.wake_after(conn)
            return records.delivery_message(records.get_delivery(conn, tenant, endpoint_id, delivery_id))

        return await self._tx.idempotent("ReplayWebhookDelivery", request, pb.WebhookDelivery, work)

    @unary_errors
    async def SendTestWebhook(self, request: pb.SendTestWebhookRequest,
                              context: grpc.aio.ServicerContext) -> pb.WebhookDelivery:
        request = parsed(request)
        endpoint_id = records.parse_endpoint(request.name)

        def work(conn: Connection, tenant: str) -> pb.WebhookDelivery:
            _require_enabled(records.get_endpoint(conn, tenant, endpoint_id))
            at = now()
            body = events.payload(events.TEST, at, {"name": records.endpoint_name(endpoint_id)})
            [delivery_id] = self._outbox.insert(conn, tenant, [endpoint_id], events.new_event_id(), events.TEST,
                                                body, at)
            return records.delivery_message(records.get_delivery(conn, tenant, endpoint_id, delivery_id))

        return await self._tx.idempotent("SendTestWebhook", request, pb.WebhookDelivery, work)


def lock_tenant_endpoints(conn: Connection, tenant: str) -> None:
    """Serialises a tenant's endpoint creations until the transaction ends, so two at once can't
    both count one under the limit (PostgreSQL; SQLite serialises every writer)."""
    if conn.dialect.name != "postgresql":
        return
    # 64 bits of a hash: two tenants that collide only wait for each other, which is harmless.
    name = f"{webhook_endpoints.name}\0{tenant}".encode()
    key = int.from_bytes(hashlib.sha256(name).digest()[:8], "big", signed=True)
    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))


def _require_enabled(endpoint: Any) -> None:
    if not endpoint.enabled:
        raise failed_precondition("the endpoint is disabled: enable it (UpdateWebhookEndpoint with enabled) first",
                                  "WEBHOOK_ENDPOINT_DISABLED")
