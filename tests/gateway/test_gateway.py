"""The public API through the gateway: API keys made with its CLI, each call acting for its key's
tenant, the internal services' answers (errors with their details, streams both ways) relayed."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from kiln.v1 import dataset_pb2 as dpb
from kiln.v1 import trainer_pb2 as pb
from kiln.v1 import trainer_pb2_grpc
from services.common.errors import status_details
from services.common.internal_client import internal_channel, tenant_metadata
from services.common.ports import free_port
from services.common.settings import ServerSettings
from services.common.upload_limits import MAX_UPLOAD_CHUNK_BYTES
from services.gateway.key_auth import REFUSED
from services.gateway.server import running_gateway
from services.gateway.settings import GatewaySettings
from tests.dataset.helpers import image_bytes, upload, upload_messages
from tests.gateway.conftest import Client, keys_cli
from tests.servers import TEST_AUTH
from tests.training_service.test_training_jobs import tiny_job


def new_key(gateway_dir, tenant: str) -> str:
    return keys_cli(gateway_dir, "create", "--tenant", tenant, "--name", f"tests for {tenant}")["secret_key"]


def test_keys_are_shown_once_listed_without_their_secret_and_revoked(gateway_dir):
    created = keys_cli(gateway_dir, "create", "--tenant", "listing", "--name", "ci")
    assert created["secret_key"].startswith(f"kiln_{created['id']}_") and created["key"] == f"kiln_{created['id']}_…"
    listed = {k["id"]: k for k in keys_cli(gateway_dir, "list", "--tenant", "listing")}
    assert listed[created["id"]]["revoked"] is None and "secret_key" not in listed[created["id"]]
    assert created["secret_key"].split("_")[2] not in str(listed)
    keys_cli(gateway_dir, "revoke", created["key"])
    assert keys_cli(gateway_dir, "list", "--tenant", "listing")[0]["revoked"] is not None


def test_every_call_needs_a_live_key_and_every_refusal_reads_the_same(gateway, gateway_channel, gateway_dir):
    good = new_key(gateway_dir, "refusals")
    key_id = good.split("_")[1]
    revoked = new_key(gateway_dir, "refusals")
    keys_cli(gateway_dir, "revoke", revoked)
    presented = [None, "not-a-key", f"kiln_{key_id}_{'x' * 32}", "kiln_0123456789ab_" + "y" * 32, revoked]
    answers = []
    for key in presented:
        with pytest.raises(grpc.RpcError) as caught:
            Client(gateway_channel, key).datasets.ListDatasets(dpb.ListDatasetsRequest())
        answers.append((caught.value.code(), caught.value.details()))
    assert answers == [(grpc.StatusCode.UNAUTHENTICATED, REFUSED)] * len(presented)
    Client(gateway_channel, good).datasets.ListDatasets(dpb.ListDatasetsRequest())
    # Health is open, as load balancers ask it without keys.
    health = health_pb2_grpc.HealthStub(gateway_channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_a_key_acts_for_its_tenant_only_and_a_claimed_tenant_is_ignored(gateway_channel, gateway_dir):
    mine = Client(gateway_channel, new_key(gateway_dir, "owner"))
    created = mine.datasets.CreateDataset(dpb.CreateDatasetRequest(dataset=dpb.Dataset(
        display_name="cats", family=dpb.MODEL_FAMILY_SD15)))
    other_key = new_key(gateway_dir, "stranger")
    # The internal tenant header, sent by a client, changes nothing: the key's tenant is the one.
    for theirs in (Client(gateway_channel, other_key), Client(gateway_channel, other_key, ("x-kiln-tenant", "owner"))):
        answers = []
        for name in (created.name, "datasets/0123456789abcdef"):
            with pytest.raises(grpc.RpcError) as caught:
                theirs.datasets.GetDataset(dpb.GetDatasetRequest(name=name))
            answers.append((caught.value.code(), caught.value.details().replace(name, "<name>")))
        assert answers[0] == answers[1] and answers[0][0] == grpc.StatusCode.NOT_FOUND
    assert mine.datasets.GetDataset(dpb.GetDatasetRequest(name=created.name)).name == created.name


def test_errors_keep_their_details_and_streams_are_relayed_both_ways(gateway_channel, gateway_dir):
    client = Client(gateway_channel, new_key(gateway_dir, "streams"))
    dataset = client.datasets.CreateDataset(dpb.CreateDatasetRequest(dataset=dpb.Dataset(
        display_name="cats", family=dpb.MODEL_FAMILY_SD15, default_repeat=1)))
    upload(client.datasets, dataset.name, image_bytes(96, 96, seed=1), filename="cat.png", tags=["mytrigger"])
    # A bad configuration: every violation, as the trainer service named it.
    with pytest.raises(grpc.RpcError) as caught:
        client.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(training_job=tiny_job(
            dataset.name, network_dim=0, unet_lr=-1.0)))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(caught.value)
    bad = error_details_pb2.BadRequest()
    assert status is not None and any(d.Unpack(bad) for d in status.details if d.Is(bad.DESCRIPTOR))
    assert {v.field for v in bad.field_violations} >= {"training_job.config.network_dim",
                                                        "training_job.config.unet_lr"}
    # A server stream: the queued job's events, then its end when it is cancelled.
    job = client.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(training_job=tiny_job(dataset.name)))
    stream = client.trainer.WatchTrainingJob(pb.WatchTrainingJobRequest(name=job.name), timeout=60)
    assert next(stream).HasField("queued")
    client.trainer.CancelTrainingJob(pb.CancelTrainingJobRequest(name=job.name))
    rest = list(stream)
    assert rest[-1].finished.state == pb.TrainingJob.State.STATE_CANCELLED


def test_an_unread_watch_stops_no_other_and_a_watch_resumes_exactly_as_directly(gateway_channel, gateway_dir,
                                                                                   trainer, worker):
    client = Client(gateway_channel, new_key(gateway_dir, "watchers"))
    dataset = client.datasets.CreateDataset(dpb.CreateDatasetRequest(dataset=dpb.Dataset(
        display_name="cats", family=dpb.MODEL_FAMILY_SD15, default_repeat=1)))
    upload(client.datasets, dataset.name, image_bytes(96, 96, seed=2), filename="cat.png", tags=["mytrigger"])
    job = client.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(training_job=tiny_job(dataset.name)))
    watch = pb.WatchTrainingJobRequest(name=job.name)
    stalled = client.trainer.WatchTrainingJob(watch, timeout=300)
    first = next(stalled)  # open and following; not read again until the job is over
    events = list(client.trainer.WatchTrainingJob(watch, timeout=300))
    assert events[-1].finished.state == pb.TrainingJob.State.STATE_SUCCEEDED
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [first, *stalled] == events  # everything, in order, once the stalled reader reads
    # Reconnecting from a seq: exactly the rest, through the gateway as straight from the service.
    middle = events[len(events) // 2].seq
    through_gateway = list(client.trainer.WatchTrainingJob(pb.WatchTrainingJobRequest(
        name=job.name, after_seq=middle), timeout=60))
    with internal_channel(trainer.address, TEST_AUTH) as channel:
        direct = list(trainer_pb2_grpc.TrainerServiceStub(channel).WatchTrainingJob(pb.WatchTrainingJobRequest(
            name=job.name, after_seq=middle), metadata=tenant_metadata("watchers"), timeout=60))
    assert through_gateway == direct == events[middle:]


def test_an_internal_service_that_is_down_is_named_never_its_address(aio, tmp_path, trainer):
    down = f"127.0.0.1:{free_port()}"  # nothing listens there
    settings = GatewaySettings(data_dir=tmp_path, server=ServerSettings(port=0, shutdown_grace=1.0), json_logs=False,
                               internal_auth=TEST_AUTH, dataset_address=down, trainer_address=trainer.address)
    key = new_key(tmp_path, "outage")
    with aio.context(running_gateway(settings)) as gateway, grpc.insecure_channel(gateway.address) as channel:
        client = Client(channel, key)
        with pytest.raises(grpc.RpcError) as caught:
            client.datasets.ListDatasets(dpb.ListDatasetsRequest(), timeout=20)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert caught.value.details() == "the dataset service is unavailable; retry later"
        info, _ = status_details(caught.value)
        assert info is not None and info.reason == "DEPENDENCY_UNAVAILABLE"
        # The services that are up answer as ever.
        assert client.trainer.ListPresets(pb.ListPresetsRequest()).presets


def test_a_chunk_over_the_limit_is_a_bad_request_at_any_size_the_gateway_reads(gateway, gateway_channel,
                                                                              gateway_dir):
    client = Client(gateway_channel, new_key(gateway_dir, "chunks"))
    dataset = client.datasets.CreateDataset(dpb.CreateDatasetRequest(dataset=dpb.Dataset(
        display_name="chunks", family=dpb.MODEL_FAMILY_SD15)))
    # Up to twice the limit: gRPC's own refusal past its message ceiling carries no details.
    for size in (MAX_UPLOAD_CHUNK_BYTES + 1, 2 * MAX_UPLOAD_CHUNK_BYTES):
        with pytest.raises(grpc.RpcError) as caught:
            client.datasets.UploadImage(upload_messages(dataset.name, bytes(size), chunk=size), timeout=60)
        info, violations = status_details(caught.value)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (size, caught.value.details())
        assert info is not None and info.reason == "CHUNK_TOO_LARGE"
        assert [(v.field, v.reason) for v in violations] == [("chunk", "CHUNK_TOO_LARGE")]
        assert str(MAX_UPLOAD_CHUNK_BYTES) in violations[0].description
    # Any other request message that large is refused as too large, with the limit it broke.
    with pytest.raises(grpc.RpcError) as caught:
        client.datasets.GetDataset(dpb.GetDatasetRequest(name="d" * (MAX_UPLOAD_CHUNK_BYTES + 1024)), timeout=60)
    info, _ = status_details(caught.value)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and info is not None
    assert info.reason == "REQUEST_TOO_LARGE"
    # A chunk of exactly the limit goes through.
    data = image_bytes(1200, 1200, seed=8301)
    assert len(data) > MAX_UPLOAD_CHUNK_BYTES
    image = client.datasets.UploadImage(upload_messages(dataset.name, data, chunk=MAX_UPLOAD_CHUNK_BYTES), timeout=60)
    assert image.width == 1200
    assert client.datasets.ListImages(dpb.ListImagesRequest(parent=dataset.name)).total_size == 1
