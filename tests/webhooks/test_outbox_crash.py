"""The outbox survives the trainer service: a replica killed with -9 while it sends a delivery
loses nothing. The event was committed with its delivery; the claim's lease runs out and the
restarted service sends it, under the same webhook-id. On PostgreSQL, as replicas run."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import grpc
import pytest

from kiln.v1 import trainer_pb2 as pb
from kiln.v1 import webhooks_pb2 as wpb
from kiln.v1 import webhooks_pb2_grpc
from kiln.webhooks import verify
from services.common.internal_client import internal_channel, tenant_metadata
from services.common.ports import free_ports
from tests.common.waiting import wait_until
from tests.servers import TEST_AUTH
from tests.training_service.conftest import Tenant, WithMetadata, trainer_process
from tests.training_service.test_training_jobs import tiny_job
from tests.webhooks.receiver import Answer

WEBHOOK_ENVIRONMENT = {
    "KILN_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true", "KILN_WEBHOOK_LEASE_SECONDS": "3",
    "KILN_WEBHOOK_TIMEOUT_SECONDS": "2", "KILN_WEBHOOK_POLL_SECONDS": "0.2",
    "KILN_WEBHOOK_RETRY_SCHEDULE": "[0, 0.3, 0.3]"}


@pytest.fixture
def datasets(dataset_service) -> Iterator[grpc.Channel]:
    with internal_channel(dataset_service.address, TEST_AUTH) as channel:
        yield channel


def test_a_delivery_in_flight_when_the_service_is_killed_is_sent_after_the_restart(
        dataset_service, datasets, receiver, s3_settings, models_dir, postgres, tmp_path):
    database = str(postgres.create_database(f"hooks_{uuid.uuid4().hex[:8]}"))
    held = threading.Event()
    receiver.script("/crash", Answer(200, hold=held))
    tenant_name = "crash"

    def started(port: int, metrics_port: int, name: str):  # type: ignore[no-untyped-def]
        return trainer_process(tmp_path / name, database, s3_settings, models_dir, dataset_service.address, port,
                               metrics_port, **WEBHOOK_ENVIRONMENT)

    ports = free_ports(4)
    with started(ports[0], ports[1], "doomed") as doomed, \
            internal_channel(f"127.0.0.1:{ports[0]}", TEST_AUTH) as channel:
        tenant = Tenant(channel, datasets, tenant_name)
        webhooks = WithMetadata(webhooks_pb2_grpc.WebhookServiceStub(channel), tenant_metadata(tenant_name))
        endpoint = webhooks.CreateWebhookEndpoint(wpb.CreateWebhookEndpointRequest(webhook_endpoint=wpb.WebhookEndpoint(
            url=receiver.url("/crash"), event_types=["training.queued"])))
        dataset = tenant.dataset(images=1)
        job = tenant.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(training_job=tiny_job(dataset.name)))
        first = receiver.wait_for("/crash", 1)[0]  # the receiver holds its answer: the attempt is in flight
        doomed.kill()
        doomed.wait()
    held.set()

    with started(ports[2], ports[3], "restarted"), internal_channel(f"127.0.0.1:{ports[2]}", TEST_AUTH) as channel:
        tenant = Tenant(channel, datasets, tenant_name)
        webhooks = WithMetadata(webhooks_pb2_grpc.WebhookServiceStub(channel), tenant_metadata(tenant_name))
        again = receiver.wait_for("/crash", 2)[1]
        assert again.headers["webhook-id"] == first.headers["webhook-id"] and again.body == first.body
        event = verify(again.body, again.headers, endpoint.secret)
        assert event["type"] == "training.queued" and event["data"]["name"] == job.name

        def succeeded() -> wpb.WebhookDelivery | None:
            listed = webhooks.ListWebhookDeliveries(wpb.ListWebhookDeliveriesRequest(parent=endpoint.name))
            return next((d for d in listed.deliveries if d.state == wpb.WebhookDelivery.State.STATE_SUCCEEDED), None)

        done = wait_until(succeeded)
        # The killed attempt was never recorded: the one after the restart is the first on record.
        assert done.attempt_count == 1 and done.status_code == 200 and done.event_id == first.headers["webhook-id"]
        tenant.trainer.CancelTrainingJob(pb.CancelTrainingJobRequest(name=job.name))
