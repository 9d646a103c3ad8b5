"""Webhooks delivered by the trainer service to a real receiver, everything set up through the
gateway as a customer's backend would: a job's events in order and signed, a publish, retries,
redirects, 410, Retry-After, an endpoint that keeps failing, replays, secret rotation."""

from __future__ import annotations

import datetime as dt
import json
import pathlib
import ssl
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2

from kiln.v1 import dataset_pb2 as dpb
from kiln.v1 import trainer_pb2 as pb
from kiln.v1 import webhooks_pb2 as wpb
from kiln.webhooks import BadSignature, verify
from services.trainer.server import running_trainer_service
from services.trainer.webhooks.addresses import AddressPolicy, system_resolver
from services.trainer.webhooks.sender import WebhookSender
from tests.common.waiting import wait_until
from tests.dataset.helpers import image_bytes, upload
from tests.dataset.test_mutual_tls import openssl
from tests.gateway.conftest import Client
from tests.gateway.test_gateway import new_key
from tests.training_service.test_training_jobs import tiny_job
from tests.webhooks.conftest import QUICK_WEBHOOKS
from tests.webhooks.receiver import Answer, Receiver

Delivery = wpb.WebhookDelivery
TRAINING = ["training.queued", "training.started", "training.epoch_saved", "training.succeeded",
            "training.failed", "training.cancelled", "model.published"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> pathlib.Path:
    """A CA, and a receiver's certificate it signed for the name `localhost` only (no IP address)."""
    root = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
            "-subj", "/CN=on-premises CA", cwd=root)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "receiver.key", "-out", "receiver.csr",
            "-subj", "/CN=receiver", cwd=root)
    (root / "receiver.ext").write_text("subjectAltName=DNS:localhost\n")
    openssl("x509", "-req", "-in", "receiver.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "receiver.pem", "-days", "1", "-extfile", "receiver.ext", cwd=root)
    return root


@pytest.fixture(scope="module")
def trainer_overrides(pki) -> dict[str, Any]:
    return {**QUICK_WEBHOOKS, "webhook_ca_file": pki / "ca.pem"}


@pytest.fixture(scope="module")
def https_receiver(pki) -> Iterator[Receiver]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki / "receiver.pem", pki / "receiver.key")
    with Receiver(tls=context) as running:
        yield running


@pytest.fixture(scope="module")
def client(gateway_channel, gateway_dir) -> Client:
    return Client(gateway_channel, new_key(gateway_dir, "hooks"))


def register(client: Client, receiver: Receiver, types: list[str] | None = None) -> tuple[wpb.WebhookEndpoint, str]:
    """A new endpoint on its own path of the receiver: (endpoint, path)."""
    path = f"/{uuid.uuid4().hex[:12]}"
    endpoint = client.webhooks.CreateWebhookEndpoint(wpb.CreateWebhookEndpointRequest(
        webhook_endpoint=wpb.WebhookEndpoint(url=receiver.url(path), event_types=types or ["training.queued"],
                                             description="tests")))
    return endpoint, path


def deliveries(client: Client, endpoint: wpb.WebhookEndpoint) -> list[Delivery]:
    return list(client.webhooks.ListWebhookDeliveries(
        wpb.ListWebhookDeliveriesRequest(parent=endpoint.name)).deliveries)


def settled(client: Client, endpoint: wpb.WebhookEndpoint, state: int) -> Delivery:
    """The endpoint's newest delivery once it is in `state`."""
    return wait_until(lambda: next((x for x in deliveries(client, endpoint)[:1] if x.state == state), None))  # type: ignore[return-value]


def test_a_training_job_delivers_its_events_in_order_signed_and_a_publish_follows(client, receiver, worker):
    endpoint, path = register(client, receiver, TRAINING)
    assert endpoint.secret.startswith("whsec_") and endpoint.enabled
    assert client.webhooks.GetWebhookEndpoint(wpb.GetWebhookEndpointRequest(name=endpoint.name)).secret == ""
    dataset = client.datasets.CreateDataset(dpb.CreateDatasetRequest(dataset=dpb.Dataset(
        display_name="hooks", family=dpb.MODEL_FAMILY_SD15, default_repeat=1)))
    upload(client.datasets, dataset.name, image_bytes(96, 96, seed=1), filename="a.png", tags=["mytrigger"])
    job = client.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(training_job=tiny_job(dataset.name,
                                                                                             epochs=1)))

    got = receiver.wait_for(path, 4, timeout=240,
                            until=lambda got: json.loads(got[-1].body)["type"] == "training.succeeded")
    events = [verify(r.body, r.headers, endpoint.secret) for r in got]
    assert [e["type"] for e in events] == ["training.queued", "training.started", "training.epoch_saved",
                                           "training.succeeded"]
    assert {e["data"]["name"] for e in events} == {job.name}
    assert [e["data"]["state"] for e in events] == ["QUEUED", "RUNNING", "RUNNING", "SUCCEEDED"]
    assert events[2]["data"]["epoch"] == 1 and events[1]["data"]["attempt"] == 1
    assert len({r.headers["webhook-id"] for r in got}) == 4
    assert all(r.headers["content-type"] == "application/json" for r in got)

    model = client.trainer.CreateModel(pb.CreateModelRequest(model=pb.Model(
        display_name=f"hooked {uuid.uuid4().hex[:6]}", training_job=job.name, epoch=1)))
    published = verify(receiver.wait_for(path, 5)[4].body, receiver.received(path)[4].headers, endpoint.secret)
    assert published["type"] == "model.published"
    assert published["data"] == {"name": model.name, "training_job": job.name, "epoch": 1}

    wait_until(lambda: deliveries(client, endpoint)[0].state == Delivery.State.STATE_SUCCEEDED)
    listed = deliveries(client, endpoint)
    assert [d.event_type for d in listed] == ["model.published", "training.succeeded", "training.epoch_saved",
                                              "training.started", "training.queued"]  # newest first
    assert all(d.state == Delivery.State.STATE_SUCCEEDED and d.status_code == 200 and d.attempt_count == 1
               and d.latency.ToNanoseconds() > 0 and not d.error for d in listed)
    assert [d.event_id for d in listed] == [r.headers["webhook-id"] for r in reversed(receiver.received(path))]
    assert client.webhooks.GetWebhookEndpoint(wpb.GetWebhookEndpointRequest(name=endpoint.name)) \
        .HasField("last_success_time")


def test_a_failed_attempt_is_retried_with_the_same_webhook_id(client, receiver):
    endpoint, path = register(client, receiver)
    receiver.script(path, Answer(500))
    sent = client.webhooks.SendTestWebhook(wpb.SendTestWebhookRequest(name=endpoint.name))
    assert sent.state == Delivery.State.STATE_PENDING and sent.event_type == "webhook.test"
    first, second = receiver.wait_for(path, 2)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == sent.event_id
    assert first.body == second.body
    verify(second.body, second.headers, endpoint.secret)
    done = settled(client, endpoint, Delivery.State.STATE_SUCCEEDED)
    assert done.attempt_count == 2 and done.status_code == 200 and done.name == sent.name


def test_the_checked_address_is_connected_to_under_the_urls_own_host_name(client, receiver):
    path = "/by-name"
    endpoint = client.webhooks.CreateWebhookEndpoint(wpb.CreateWebhookEndpointRequest(
        webhook_endpoint=wpb.WebhookEndpoint(url=receiver.url(path, host="localhost"),
                                             event_types=["model.published"])))
    client.webhooks.SendTestWebhook(wpb.SendTestWebhookRequest(name=endpoint.name))
    [got] = receiver.wait_for(path, 1)
    assert got.headers["host"] == f"localhost:{receiver.port}"
    assert verify(got.body, got.headers, endpoint.secret)["data"] == {"name": endpoint.name}


def test_https_is_verified_against_the_urls_name_while_connecting_to_the_checked_address(client, https_receiver):
    """The certificate names only `localhost`: the attempt connects to 127.0.0.1 (the address it
    checked) and still verifies the certificate against the URL's name, sent as SNI."""
    path = "/tls"
    endpoint = client.webhooks.CreateWebhookEndpoint(wpb.CreateWebhookEndpointRequest(
        webhook_endpoint=wpb.WebhookEndpoint(url=https_receiver.url(path, host="localhost"),
                                             event_types=["model.published"])))
    client.webhooks.SendTestWebhook(wpb.SendTestWebhookRequest(name=endpoint.name))
    [got] = https_receiver.wait_for(path, 1)
    assert got.headers["host"] == f"localhost:{https_receiver.port}" and "localhost" in https_receiver.server_names
    assert settled(client, endpoint, Delivery.State.STATE_SUCCEEDED).status_code == 200

    # By its address the same receiver's certificate doesn't match: the attempt fails, nothing is sent.
    by_address = client.webhooks.CreateWebhookEndpoint(wpb.CreateWebhookEndpointRequest(
        webhook_endpoint=wpb.WebhookEndpoint(url=https_receiver.url("/tls-ip"), event_types=["model.published"])))
    client.webhooks.SendTestWebhook(wpb.SendTestWebhookRequest(name=by_address.name))
    failed = wait_until(lambda: next((d for d in deliveries(client, by_address) if d.attempt_count), None))
    assert failed.status_code == 0 and "certificate" in failed.error.lower(), failed.error
    assert https_receiver.received("/tls-ip") == []


def test_a_connection_verified_for_one_name_is_not_reused_for_another_on_the_same_address(aio, pki, https_receiver):
    """`other.test` resolves (through the policy's resolver) to the receiver's address too, but
    the certificate names only `localhost`: after a delivery to `localhost` kept its connection
    alive, one to `other.test` still verifies the certificate, and fails."""

    async def resolve(host: str, port: int) -> list[str]:
        return ["127.0.0.1"] if host == "other.test" else await system_resolver(host, port)

    sender = WebhookSender(AddressPolicy(True, resolver=resolve), 10, pki / "ca.pem")

    async def both() -> tuple[list[int], str]:
        try:
            codes = [(await sender.send(https_receiver.url(f"/kept-alive-{n}", host="localhost"), f"msg_{n}", "{}",
                                        ["whsec_" + "A" * 32])).status_code for n in range(2)]
            other = await sender.send(https_receiver.url("/other-name", host="other.test"), "msg_2", "{}",
                                      ["whsec_" + "A" * 32])
            return codes, other.error
        finally:
            await sender.close()

    handshakes = len(https_receiver.server_names)
    codes, error = aio.run(both())
    # The second delivery to `localhost` reused the first one's connection (one handshake for both).
    assert codes == [200, 200] and https_receiver.server_names[handshakes:] == ["localhost", "other.test"]
    assert "certificate" in error.lower(), error
    assert https_receiver.received("/other-name") == []


def test_deliveries_show_each_failure_and_when_the_next_attempt_is_due(client, receiver):
    endpoint, path = register(client, receiver)
    receiver.script(path, Answer(503), Answer(503, {"retry-after": "30"}))
    client.webhooks.SendTestWebhook(wpb.SendTestWebhookRequest(name=endpoint.name))
    receiver.wait_for(path, 2)
    waiting = wait_until(lambda: next((d for d in deliveries(client, endpoint)
                                       if d.attempt_count == 2), None))
    assert waiting.state == Delivery.State.STATE_PENDING and waiting.status_code == 503
    assert "503" in waiting.error and waiting.latency.ToNanoseconds() > 0
    # Retry-After (30 s) outweighs the schedule's 0.3 s.
    assert waiting.next_attempt_time.ToDatetime() - waiting.last_attempt_time.ToDatetime() >= \
        dt.timedelta(seconds=29)
    client.webhooks.DeleteWebhookEndpoint(wpb.DeleteWebhookEndpointRequest(name=endpoint.name))


def test_retry_after_is_honoured(client, receiver):
    endpoint, path = register(client, receiver)
    receiver.script(path, Answer(503, {"retry-after": "2"}))
    client.webhooks.SendTestWebhook(wpb.SendTestWebhookRequest(name=endpoint.name))
    first, second = receiver.wait_for(path, 2)
    assert second.at - first.at >= 1.9  # the schedule alone would have retried after 0.3 s
    assert settled(client, endpoint, Delivery.State.STATE_SUCCEEDED).attempt_count == 2


def test_a_redirect_is_a_failure_never_followed_and_an_endpoint_failing_every_attempt_is_disabled(client, receiver):
    endpoint, path = register(client, receiver)
    elsewhere = receiver.url("/moved")
    receiver.script(path, then=Answer(302, {"location": elsewhere}))
    client.webhooks.SendTestWebhook(wpb.SendTestWebhookRequest(name=endpoint.name))
    assert len(receiver.wait_for(path, 3)) == 3  # the whole (shrunk) schedule
    failed = settled(client, endpoint, Delivery.State.STATE_FAILED)
    assert failed.status_code == 302 and failed.attempt_count == 3
    assert "redirects are not followed" in failed.error and elsewhere in failed.error
    assert receiver.received("/moved") == []
    disabled = wait_until(lambda: (x := client.webhooks.GetWebhookEndpoint(
        wpb.GetWebhookEndpointRequest(name=endpoint.name))) and not x.enabled and x)
    assert "all 3 attempts" in disabled.disabled_reason and "redirects are not followed" in disabled.disabled_reason
    assert disabled.HasField("disable_time")
    with pytest.raises(grpc.RpcError) as refused:
        client.webhooks.SendTestWebhook(wpb.SendTestWebhookRequest(name=endpoint.name))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_410_disables_the_endpoint_at_once_and_re_enabling_delivers_again(client, receiver):
    endpoint, path = register(client, receiver)
    receiver.script(path, Answer(410))
    client.webhooks.SendTestWebhook(wpb.SendTestWebhookRequest(name=endpoint.name))
    failed = settled(client, endpoint, Delivery.State.STATE_FAILED)
    assert failed.attempt_count == 1 and failed.status_code == 410
    gone = client.webhooks.GetWebhookEndpoint(wpb.GetWebhookEndpointRequest(name=endpoint.name))
    assert not gone.enabled and "410" in gone.disabled_reason
    assert len(receiver.received(path)) == 1

    enabled = client.webhooks.UpdateWebhookEndpoint(wpb.UpdateWebhookEndpointRequest(
        webhook_endpoint=wpb.WebhookEndpoint(name=endpoint.name, enabled=True),
        update_mask=field_mask_pb2.FieldMask(paths=["enabled"])))
    assert enabled.enabled and enabled.disabled_reason == "" and not enabled.HasField("disable_time")
    client.webhooks.SendTestWebhook(wpb.SendTestWebhookRequest(name=endpoint.name))
    assert len(receiver.wait_for(path, 2)) == 2
    assert settled(client, endpoint, Delivery.State.STATE_SUCCEEDED).status_code == 200


def test_an_endpoint_hears_of_one_event_at_a_time_even_from_two_replicas(aio, store, trainer, client, receiver):
    """The first delivery is held by the receiver on one replica; the second replica, idle, must
    not send the next event meanwhile (it would arrive first once the receiver answers)."""
    endpoint, path = register(client, receiver)
    release = threading.Event()
    receiver.script(path, Answer(200, hold=release))
    with aio.context(running_trainer_service(trainer.components.settings, store)):
        first = client.webhooks.SendTestWebhook(wpb.SendTestWebhookRequest(name=endpoint.name))
        receiver.wait_for(path, 1)
        second = client.webhooks.SendTestWebhook(wpb.SendTestWebhookRequest(name=endpoint.name))
        # Many of the idle replica's polling rounds (0.2 s) pass, well within the lease (5 s).
        with pytest.raises(AssertionError):
            receiver.wait_for(path, 2, timeout=2)
        release.set()
        got = receiver.wait_for(path, 2)
    assert [r.headers["webhook-id"] for r in got] == [first.event_id, second.event_id]


def test_a_replay_sends_the_same_event_again(client, receiver):
    endpoint, path = register(client, receiver)
    client.webhooks.SendTestWebhook(wpb.SendTestWebhookRequest(name=endpoint.name))
    done = settled(client, endpoint, Delivery.State.STATE_SUCCEEDED)
    replayed = client.webhooks.ReplayWebhookDelivery(wpb.ReplayWebhookDeliveryRequest(name=done.name))
    assert replayed.state == Delivery.State.STATE_PENDING
    first, second = receiver.wait_for(path, 2)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == done.event_id and first.body == second.body
    # A fresh delivery of the same event: its attempts count from zero again.
    assert settled(client, endpoint, Delivery.State.STATE_SUCCEEDED).attempt_count == 1


def test_a_replayed_failed_delivery_gets_the_whole_retry_schedule_again(client, receiver):
    endpoint, path = register(client, receiver)
    receiver.script(path, Answer(500), Answer(500), Answer(500))
    client.webhooks.SendTestWebhook(wpb.SendTestWebhookRequest(name=endpoint.name))
    failed = settled(client, endpoint, Delivery.State.STATE_FAILED)
    assert failed.attempt_count == 3
    client.webhooks.UpdateWebhookEndpoint(wpb.UpdateWebhookEndpointRequest(
        webhook_endpoint=wpb.WebhookEndpoint(name=endpoint.name, enabled=True),
        update_mask=field_mask_pb2.FieldMask(paths=["enabled"])))

    receiver.script(path, Answer(500))  # then 200: the replay's first attempt fails, its retry succeeds
    replayed = client.webhooks.ReplayWebhookDelivery(wpb.ReplayWebhookDeliveryRequest(name=failed.name))
    assert replayed.state == Delivery.State.STATE_PENDING and replayed.attempt_count == 0 and not replayed.error
    done = settled(client, endpoint, Delivery.State.STATE_SUCCEEDED)
    assert done.name == failed.name and done.attempt_count == 2 and done.status_code == 200
    assert len(receiver.received(path)) == 5


def test_a_rotated_secret_signs_beside_the_old_one_until_the_overlap_ends(client, receiver):
    endpoint, path = register(client, receiver)
    old = endpoint.secret
    rotated = client.webhooks.RotateWebhookSecret(wpb.RotateWebhookSecretRequest(
        name=endpoint.name, overlap=duration_pb2.Duration(seconds=3600)))
    new = rotated.secret
    assert new.startswith("whsec_") and new != old and rotated.HasField("previous_secret_expire_time")
    client.webhooks.SendTestWebhook(wpb.SendTestWebhookRequest(name=endpoint.name))
    during = receiver.wait_for(path, 1)[0]
    assert len(during.headers["webhook-signature"].split()) == 2
    verify(during.body, during.headers, old)
    verify(during.body, during.headers, new)

    # Rotated again with no overlap: only the newest secret signs, the two before it no longer do.
    newest = client.webhooks.RotateWebhookSecret(wpb.RotateWebhookSecretRequest(
        name=endpoint.name, overlap=duration_pb2.Duration(seconds=0))).secret
    assert not client.webhooks.GetWebhookEndpoint(
        wpb.GetWebhookEndpointRequest(name=endpoint.name)).HasField("previous_secret_expire_time")
    client.webhooks.SendTestWebhook(wpb.SendTestWebhookRequest(name=endpoint.name))
    after = receiver.wait_for(path, 2)[1]
    assert len(after.headers["webhook-signature"].split()) == 1
    verify(after.body, after.headers, newest)
    verify(after.body, after.headers, [old, new, newest])
    for retired in (old, new):
        with pytest.raises(BadSignature):
            verify(after.body, after.headers, retired)


def test_endpoints_are_listed_updated_and_deleted_with_their_deliveries(client, receiver):
    endpoint, path = register(client, receiver)
    listed = client.webhooks.ListWebhookEndpoints(wpb.ListWebhookEndpointsRequest(page_size=100))
    assert endpoint.name in [e.name for e in listed.webhook_endpoints]
    assert all(e.secret == "" for e in listed.webhook_endpoints)
    changed = client.webhooks.UpdateWebhookEndpoint(wpb.UpdateWebhookEndpointRequest(
        webhook_endpoint=wpb.WebhookEndpoint(name=endpoint.name, event_types=["model.published"],
                                             description="only models"),
        update_mask=field_mask_pb2.FieldMask(paths=["event_types", "description"]), request_id="u1"))
    assert list(changed.event_types) == ["model.published"] and changed.description == "only models"
    assert changed.url == endpoint.url
    with pytest.raises(grpc.RpcError) as bad:
        client.webhooks.UpdateWebhookEndpoint(wpb.UpdateWebhookEndpointRequest(
            webhook_endpoint=wpb.WebhookEndpoint(name=endpoint.name, event_types=["training.exploded"]),
            update_mask=field_mask_pb2.FieldMask(paths=["event_types", "secret"])))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for _ in range(3):
        client.webhooks.SendTestWebhook(wpb.SendTestWebhookRequest(name=endpoint.name))
    receiver.wait_for(path, 3)
    first = client.webhooks.ListWebhookDeliveries(wpb.ListWebhookDeliveriesRequest(parent=endpoint.name,
                                                                                   page_size=2))
    rest = client.webhooks.ListWebhookDeliveries(wpb.ListWebhookDeliveriesRequest(
        parent=endpoint.name, page_size=2, page_token=first.next_page_token))
    assert len(first.deliveries) == 2 and len(rest.deliveries) == 1 and rest.next_page_token == ""
    times = [d.create_time.ToNanoseconds() for d in [*first.deliveries, *rest.deliveries]]
    assert times == sorted(times, reverse=True)

    client.webhooks.DeleteWebhookEndpoint(wpb.DeleteWebhookEndpointRequest(name=endpoint.name))
    for call, request in ((client.webhooks.GetWebhookEndpoint, wpb.GetWebhookEndpointRequest(name=endpoint.name)),
                          (client.webhooks.ListWebhookDeliveries,
                           wpb.ListWebhookDeliveriesRequest(parent=endpoint.name))):
        with pytest.raises(grpc.RpcError) as gone:
            call(request)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_create_retried_with_its_request_id_answers_the_same_endpoint(client, receiver):
    request = wpb.CreateWebhookEndpointRequest(webhook_endpoint=wpb.WebhookEndpoint(
        url=receiver.url("/idempotent"), event_types=["training.failed"]), request_id=uuid.uuid4().hex)
    first = client.webhooks.CreateWebhookEndpoint(request)
    again = client.webhooks.CreateWebhookEndpoint(request)
    assert again == first
    names = [e.name for e in client.webhooks.ListWebhookEndpoints(
        wpb.ListWebhookEndpointsRequest(page_size=100)).webhook_endpoints]
    assert names.count(first.name) == 1
