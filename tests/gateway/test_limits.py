"""Per-key limits: a request rate with bursts, and open watch streams; refusals say which limit,
for which key, and (for the rate) when to retry. Request and upload sizes: refused at the gateway
with a QuotaFailure naming the setting, before anything is stored."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from kiln.v1 import dataset_pb2 as dpb
from kiln.v1 import trainer_pb2 as pb
from services.common.errors import ServiceError, status_details
from services.gateway.limits import KeyLimits
from services.gateway.request_sizes import UPLOAD_METHOD, RequestSizes
from tests.dataset.helpers import image_bytes, quota_failure, upload, upload_messages
from tests.gateway.conftest import Client
from tests.gateway.test_gateway import new_key
from tests.training_service.test_training_jobs import tiny_job

WATCHES = 2
MAX_REQUEST, MAX_UPLOAD = 4096, 200_000


@pytest.fixture(scope="module")
def gateway_overrides() -> dict[str, Any]:
    return {"max_watch_streams_per_key": WATCHES, "key_requests_per_second": 1000.0, "key_request_burst": 1000,
            "max_request_bytes": MAX_REQUEST, "max_upload_bytes": MAX_UPLOAD}


def test_the_rate_refills_over_time_and_a_refusal_says_when_to_retry():
    now = [0.0]
    limits = KeyLimits(rate=2.0, burst=3, max_watch_streams=1, clock=lambda: now[0])
    for _ in range(3):
        limits.admit("k1", "/kiln.v1.DatasetService/ListDatasets")()
    with pytest.raises(ServiceError) as refused:
        limits.admit("k1", "/kiln.v1.DatasetService/ListDatasets")
    assert refused.value.reason == "REQUEST_RATE_PER_KEY" and refused.value.retry_delay == pytest.approx(0.5)
    assert refused.value.quota == [("key:kiln_k1", "key_requests_per_second")]
    limits.admit("k2", "/kiln.v1.DatasetService/ListDatasets")()  # another key has its own bucket
    now[0] = 0.5
    limits.admit("k1", "/kiln.v1.DatasetService/ListDatasets")()  # one token back after 1/rate


def test_watch_streams_are_counted_while_open_and_released_when_they_end():
    limits = KeyLimits(rate=100.0, burst=100, max_watch_streams=1)
    release = limits.admit("k", "/kiln.v1.TrainerService/WatchTrainingJob")
    with pytest.raises(ServiceError) as refused:
        limits.admit("k", "/kiln.v1.TrainerService/WatchTrainingJob")
    assert refused.value.reason == "WATCH_STREAMS_PER_KEY"
    release()
    limits.admit("k", "/kiln.v1.TrainerService/WatchTrainingJob")()


def test_one_watch_too_many_through_the_gateway_is_refused_with_a_quota_failure(gateway_channel, gateway_dir):
    client = Client(gateway_channel, new_key(gateway_dir, "watcher"))
    dataset = client.datasets.CreateDataset(dpb.CreateDatasetRequest(dataset=dpb.Dataset(
        display_name="cats", family=dpb.MODEL_FAMILY_SD15)))
    upload(client.datasets, dataset.name, image_bytes(96, 96, seed=3), filename="cat.png", tags=["mytrigger"])
    job = client.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(training_job=tiny_job(dataset.name)))
    open_streams = [client.trainer.WatchTrainingJob(pb.WatchTrainingJobRequest(name=job.name), timeout=60)
                    for _ in range(WATCHES)]
    for stream in open_streams:
        assert next(stream).HasField("queued")  # each is open and following
    with pytest.raises(grpc.RpcError) as caught:
        next(client.trainer.WatchTrainingJob(pb.WatchTrainingJobRequest(name=job.name), timeout=60))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info, _ = status_details(caught.value)
    assert info is not None and info.reason == "WATCH_STREAMS_PER_KEY"
    status = rpc_status.from_call(caught.value)
    quota = error_details_pb2.QuotaFailure()
    assert status is not None and any(d.Unpack(quota) for d in status.details if d.Is(quota.DESCRIPTOR))
    assert quota.violations[0].description == "max_watch_streams_per_key"
    # Other calls of the key go on; the streams end with the job.
    client.trainer.CancelTrainingJob(pb.CancelTrainingJobRequest(name=job.name))
    for stream in open_streams:
        assert list(stream)[-1].finished.state == pb.TrainingJob.State.STATE_CANCELLED


def _refused_for_size(call: Any, *args: Any) -> tuple[str, list[tuple[str, str]]]:
    with pytest.raises(grpc.RpcError) as refused:
        call(*args)
    info, _ = status_details(refused.value)
    assert info is not None, (refused.value.code(), refused.value.details())
    return info.reason, [(v.subject, v.description) for v in quota_failure(refused.value).violations]


def test_a_request_over_the_size_limit_is_refused_and_the_gateway_goes_on(gateway_channel, gateway_dir):
    client = Client(gateway_channel, new_key(gateway_dir, "sizes"))
    huge = dpb.CreateDatasetRequest(dataset=dpb.Dataset(display_name="x" * MAX_REQUEST,
                                                        family=dpb.MODEL_FAMILY_SD15))
    assert _refused_for_size(client.datasets.CreateDataset, huge) == (
        "REQUEST_TOO_LARGE", [("tenant:sizes", "max_request_bytes")])
    assert client.datasets.ListDatasets(dpb.ListDatasetsRequest()).datasets == []  # nothing was created


def test_uploads_over_the_size_limit_are_refused_whether_declared_or_streamed(gateway_channel, gateway_dir):
    client = Client(gateway_channel, new_key(gateway_dir, "uploads"))
    dataset = client.datasets.CreateDataset(dpb.CreateDatasetRequest(dataset=dpb.Dataset(
        display_name="big", family=dpb.MODEL_FAMILY_SD15)))
    big = image_bytes(320, 320, seed=5)
    assert len(big) > MAX_UPLOAD
    expected = ("UPLOAD_TOO_LARGE", [("tenant:uploads", "max_upload_bytes")])
    declared = upload_messages(dataset.name, big, filename="big.png", size_bytes=len(big))
    assert _refused_for_size(client.datasets.UploadImage, declared) == expected
    # Declaring nothing doesn't help: the streamed bytes are counted, and the upload stops there.
    assert _refused_for_size(client.datasets.UploadImage, upload_messages(dataset.name, big, "big.png")) == expected
    browser = dpb.CreateImageUploadRequest(parent=dataset.name, role=dpb.IMAGE_ROLE_TRAINING, filename="big.png",
                                           size_bytes=len(big))
    assert _refused_for_size(client.datasets.CreateImageUpload, browser) == expected
    assert client.datasets.ListImages(dpb.ListImagesRequest(parent=dataset.name)).total_size == 0
    # An image within the limit goes through the same checks.
    upload(client.datasets, dataset.name, image_bytes(96, 96, seed=6), filename="small.png")
    assert client.datasets.ListImages(dpb.ListImagesRequest(parent=dataset.name)).total_size == 1


def test_the_transport_takes_no_message_larger_than_an_answerable_refusal_needs():
    # A whole upload streams in chunks, so its size is no message's: a 50 MiB image allowance must not
    # let every method read 50 MiB messages.
    assert RequestSizes(4 * 1024 * 1024, 50 * 1024 * 1024).largest_message_bytes < 9 * 1024 * 1024
    # A request limit above the transport's default still reaches these checks.
    assert RequestSizes(20 * 1024 * 1024, 1024).largest_message_bytes > 20 * 1024 * 1024


def test_a_message_larger_than_that_is_refused_by_the_transport_unread(gateway, gateway_dir):
    key = new_key(gateway_dir, "transport")
    with grpc.insecure_channel(gateway.address, options=[("grpc.max_send_message_length", -1)]) as channel:
        call = channel.unary_unary("/kiln.v1.DatasetService/ListDatasets", request_serializer=lambda raw: raw,
                                   response_deserializer=dpb.ListDatasetsResponse.FromString)
        nine_mib = 9 * 1024 * 1024
        with pytest.raises(grpc.RpcError) as refused:
            call(b"\x1a" + _varint(nine_mib) + b"x" * nine_mib, metadata=[("authorization", f"Bearer {key}")])
    # gRPC's own refusal: the gateway never read the message, so no QuotaFailure of its checks.
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status_details(refused.value)[0] is None


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])


def test_chunks_count_whatever_order_their_fields_come_in(gateway_channel, gateway_dir):
    """Fields may come in any order: a chunk after an unknown field is counted all the same."""
    key = new_key(gateway_dir, "ordering")
    client = Client(gateway_channel, key)
    dataset = client.datasets.CreateDataset(dpb.CreateDatasetRequest(dataset=dpb.Dataset(
        display_name="order", family=dpb.MODEL_FAMILY_SD15)))
    big = image_bytes(320, 320, seed=5)
    assert len(big) > MAX_UPLOAD
    unknown_field = b"\xf8\x07\x01"  # field 127, varint 1

    def messages():
        yield dpb.UploadImageRequest(metadata=dpb.UploadImageMetadata(
            parent=dataset.name, filename="big.png", role=dpb.IMAGE_ROLE_TRAINING)).SerializeToString()
        for start in range(0, len(big), 64 * 1024):
            piece = big[start:start + 64 * 1024]
            yield unknown_field + b"\x12" + _varint(len(piece)) + piece

    call = gateway_channel.stream_unary(UPLOAD_METHOD, request_serializer=lambda raw: raw,
                                        response_deserializer=dpb.Image.FromString)
    assert _refused_for_size(lambda: call(messages(), metadata=[("authorization", f"Bearer {key}")])) == (
        "UPLOAD_TOO_LARGE", [("tenant:ordering", "max_upload_bytes")])
    assert client.datasets.ListImages(dpb.ListImagesRequest(parent=dataset.name)).total_size == 0
