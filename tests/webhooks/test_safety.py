"""Where webhooks may not go, with private networks refused (the default): bad URLs are refused
at registration with the field named, and a name that resolves inside is refused again at
delivery time, on the address the dispatcher would connect to."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import grpc
import pytest

from kiln.v1 import webhooks_pb2 as wpb
from kiln.v1 import webhooks_pb2_grpc
from services.common.errors import status_details
from services.common.internal_client import internal_channel, tenant_metadata
from services.trainer.server import running_trainer_service
from tests.common.waiting import wait_until
from tests.gateway.conftest import Client
from tests.gateway.test_gateway import new_key
from tests.servers import TEST_AUTH
from tests.training_service.conftest import WithMetadata
from tests.webhooks.conftest import QUICK_WEBHOOKS

Delivery = wpb.WebhookDelivery
# Settled deliveries are deleted this long after their last attempt.
KEPT_SECONDS = 4.0


@pytest.fixture(scope="module")
def trainer_overrides() -> dict[str, Any]:
    return {**QUICK_WEBHOOKS, "webhook_allow_private_networks": False, "webhook_blocked_networks": ["192.0.2.0/24"],
            "webhook_deliveries_kept_days": KEPT_SECONDS / 86400}


@pytest.fixture(scope="module")
def client(gateway_channel, gateway_dir) -> Client:
    return Client(gateway_channel, new_key(gateway_dir, "safety"))


def _refusal(client: Client, url: str, types: tuple[str, ...] = ("training.succeeded",)) -> list[tuple[str, str]]:
    with pytest.raises(grpc.RpcError) as refused:
        client.webhooks.CreateWebhookEndpoint(wpb.CreateWebhookEndpointRequest(
            webhook_endpoint=wpb.WebhookEndpoint(url=url, event_types=list(types))))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, url
    _, violations = status_details(refused.value)
    return [(v.field, v.description) for v in violations]


@pytest.mark.parametrize(("url", "why"), [
    ("ftp://example.com/hook", "only http:// and https://"),
    ("https://user:pass@example.com/hook", "no credentials"),
    ("http://127.0.0.1:9/hook", "loopback"),
    ("http://localhost:9/hook", "loopback"),
    ("http://[::1]:9/hook", "loopback"),
    ("http://[::ffff:127.0.0.1]:9/hook", "loopback"),
    ("http://[64:ff9b::7f00:1]:9/hook", "carries 127.0.0.1: 127.0.0.1 is loopback"),
    ("http://[64:ff9b::a00:1]/hook", "carries 10.0.0.1: 10.0.0.1 is in a private network"),
    ("http://[64:ff9b::a9fe:a9fe]/latest/meta-data", "carries 169.254.169.254: 169.254.169.254 is link-local"),
    ("http://[64:ff9b:1::a00:1]/hook", "local-use NAT64"),
    ("http://[2002:7f00:1::]/hook", "carries 127.0.0.1: 127.0.0.1 is loopback"),
    ("http://[2002:a9fe:a9fe::1]/hook", "carries 169.254.169.254"),
    ("http://[::7f00:1]/hook", "IPv4-compatible"),
    ("http://[::a00:1]/hook", "IPv4-compatible"),
    # Teredo: server 65.54.227.120 (public), client 10.0.0.1 (the last 32 bits, inverted).
    ("http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/hook", "carries 10.0.0.1"),
    # Teredo with the server inside Kiln's own network.
    ("http://[2001:0:c000:22d:8000:63bf:f7f7:f7f7]/hook", "carries 192.0.2.45"),
    ("http://10.0.0.1/hook", "private network"),
    ("http://192.168.1.20/hook", "private network"),
    ("http://169.254.169.254/latest/meta-data", "link-local"),
    ("http://0.0.0.0/hook", "unspecified"),
    ("http://224.0.0.1/hook", "multicast"),
    ("http://192.0.2.7/hook", "a network Kiln's own services use"),
    ("not a url", "no spaces"),
    ("https:///hook", "no host"),
])
def test_urls_that_could_reach_inside_are_refused_at_registration(client, url, why):
    violations = _refusal(client, url)
    assert len(violations) == 1 and violations[0][0] == "webhook_endpoint.url" and why in violations[0][1], violations


def test_unknown_event_types_and_missing_ones_are_named(client):
    assert _refusal(client, "http://127.0.0.1:9/", ("training.succeeded", "training.exploded")) == [
        ("webhook_endpoint.url", "127.0.0.1 is loopback: webhooks go to public addresses"),
        ("webhook_endpoint.event_types[1]", "one of training.queued, training.started, training.epoch_saved, "
                                            "training.succeeded, training.failed, training.cancelled, "
                                            "model.published")]
    assert [f for f, _ in _refusal(client, "http://127.0.0.1:9/", ())] == [
        "webhook_endpoint.url", "webhook_endpoint.event_types"]


def registered_where_private_networks_are_allowed(aio, store, trainer, url: str
                                                  ) -> tuple[wpb.WebhookEndpoint, Delivery]:
    """An endpoint registered, and a test event sent to it, through a second replica that allows
    private networks and delivers nothing itself: this module's replica, which refuses them,
    is the one that delivers."""
    settings = trainer.components.settings.model_copy(update={
        "webhook_allow_private_networks": True, "webhook_concurrency": 0})
    with aio.context(running_trainer_service(settings, store)) as permissive, \
            internal_channel(permissive.address, TEST_AUTH) as channel:
        lenient = WithMetadata(webhooks_pb2_grpc.WebhookServiceStub(channel), tenant_metadata("safety"))
        endpoint = lenient.CreateWebhookEndpoint(wpb.CreateWebhookEndpointRequest(
            webhook_endpoint=wpb.WebhookEndpoint(url=url, event_types=["training.queued"])))
        return endpoint, lenient.SendTestWebhook(wpb.SendTestWebhookRequest(name=endpoint.name))


def test_a_name_resolving_to_loopback_is_refused_at_delivery_time(aio, store, trainer, client, receiver):
    endpoint, sent = registered_where_private_networks_are_allowed(aio, store, trainer,
                                                                   receiver.url("/inside", host="localhost"))

    def attempted() -> Delivery | None:
        listed = client.webhooks.ListWebhookDeliveries(wpb.ListWebhookDeliveriesRequest(parent=endpoint.name))
        return next((d for d in listed.deliveries if d.name == sent.name and d.attempt_count), None)

    delivery = wait_until(attempted)
    assert delivery.status_code == 0 and delivery.error.startswith("refused: ") and "loopback" in delivery.error
    assert receiver.received("/inside") == []


def test_settled_deliveries_are_listed_for_the_retention_then_deleted(aio, store, trainer, client):
    """An endpoint on loopback, which this replica refuses: its delivery fails every attempt, is
    listed for the retention after its last one, then deleted."""
    endpoint, sent = registered_where_private_networks_are_allowed(aio, store, trainer,
                                                                   "http://127.0.0.1:9/retention")

    def listed() -> list[Delivery]:
        return list(client.webhooks.ListWebhookDeliveries(
            wpb.ListWebhookDeliveriesRequest(parent=endpoint.name)).deliveries)

    failed = wait_until(lambda: next((d for d in listed() if d.state == Delivery.State.STATE_FAILED), None))
    assert failed.name == sent.name and failed.attempt_count == 3
    wait_until(lambda: listed() == [], timeout=30)
    assert (time.time() - failed.last_attempt_time.ToDatetime(dt.UTC).timestamp()) >= KEPT_SECONDS - 0.5
