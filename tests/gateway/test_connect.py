"""The public API over the Connect protocol on HTTP/1.1, as browsers, curl and Connect clients call
it: the same keys, tenants, limits and errors (with their details) as over gRPC, server streams
relayed message by message, CORS for the allowed origins, a health check, bodies limited in size."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.protocol import ProtocolType
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kiln.v1 import dataset_pb2 as dpb
from kiln.v1 import trainer_pb2 as pb
from kiln.v1.dataset_connect import DatasetServiceClientSync
from kiln.v1.trainer_connect import TrainerServiceClientSync
from services.common.ports import free_port
from services.gateway.key_auth import REFUSED
from services.gateway.server import PUBLIC_SERVICES, GatewayService
from tests.common.metrics_helpers import RPC_COUNT, scrape, value, wait_until_served
from tests.dataset.helpers import image_bytes, upload
from tests.gateway import test_tenant_matrix as matrix
from tests.gateway.conftest import ROOT, Client, keys_cli
from tests.gateway.test_gateway import new_key
from tests.training_service import conftest as training
from tests.training_service.test_training_jobs import tiny_job

worker = training.worker
ALLOWED_ORIGIN = "https://studio.example.com"
State = pb.TrainingJob.State


@pytest.fixture(scope="module")
def gateway_overrides() -> dict[str, Any]:
    # One watch stream per key: a stream the client left must have been let go for the next to open.
    return {"cors_allowed_origins": [ALLOWED_ORIGIN], "max_watch_streams_per_key": 1}


@pytest.fixture(scope="module")
def trainer_overrides() -> dict[str, Any]:
    return matrix.WEBHOOK_OWNER_SETTINGS


@pytest.fixture(scope="module")
def http(gateway: GatewayService) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://{gateway.http_address}", timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def key(gateway_dir) -> str:
    return new_key(gateway_dir, "connect")


@pytest.fixture(scope="module")
def dataset(gateway_channel, key) -> dpb.Dataset:
    client = Client(gateway_channel, key)
    created = client.datasets.CreateDataset(dpb.CreateDatasetRequest(dataset=dpb.Dataset(
        display_name="cats", family=dpb.MODEL_FAMILY_SD15, default_repeat=1)))
    upload(client.datasets, created.name, image_bytes(96, 96, seed=1), filename="cat.png", tags=["mytrigger"])
    return created


def call(http: httpx.Client, method: str, body: dict[str, Any] | bytes, key: str | None,
         content_type: str = "application/json", **headers: str) -> httpx.Response:
    """A unary Connect call, `method` as Service/Method of kiln.v1."""
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post(f"/kiln.v1.{method}", content=content, headers={"content-type": content_type, **headers})


def as_message(data: dict[str, Any], message: Message) -> Any:
    return json_format.ParseDict(data, message)


def details(answer: dict[str, Any]) -> dict[str, Message]:
    """The google.rpc details of a Connect error, by type name."""
    kinds = {"google.rpc.BadRequest": error_details_pb2.BadRequest, "google.rpc.QuotaFailure":
             error_details_pb2.QuotaFailure, "google.rpc.ErrorInfo": error_details_pb2.ErrorInfo,
             "google.rpc.RetryInfo": error_details_pb2.RetryInfo}
    return {d["type"]: kinds[d["type"]].FromString(base64.b64decode(d["value"] + "==")) for d in answer["details"]}


def envelope(message: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(message)) + message


def envelopes(chunks: Iterator[bytes]) -> Iterator[tuple[int, bytes]]:
    """(flags, message) of each Connect envelope, as soon as it has arrived whole."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= 5 and len(buffer) >= 5 + struct.unpack(">I", buffer[1:5])[0]:
            size = struct.unpack(">I", buffer[1:5])[0]
            yield buffer[0], buffer[5:5 + size]
            buffer = buffer[5 + size:]


def watch(http: httpx.Client, key: str, job: str, after_seq: int = 0,
          timeout_ms: int = 300_000) -> tuple[list[pb.TrainingEvent], dict[str, Any]]:
    """A WatchTrainingJob server stream in application/connect+json: its events and its end message."""
    request = envelope(json.dumps({"name": job, "afterSeq": str(after_seq)}).encode())
    events: list[pb.TrainingEvent] = []
    with http.stream("POST", "/kiln.v1.TrainerService/WatchTrainingJob", content=request, timeout=300, headers={
            "content-type": "application/connect+json", "authorization": f"Bearer {key}",
            "connect-timeout-ms": str(timeout_ms)}) as response:
        assert response.status_code == 200 and response.headers["content-type"] == "application/connect+json"
        for flags, message in envelopes(response.iter_bytes()):
            if flags & 0x02:  # the end of the stream
                return events, json.loads(message)
            events.append(as_message(json.loads(message), pb.TrainingEvent()))
    raise AssertionError("the stream ended without its end message")


def test_unary_calls_in_json_and_in_binary(http, key):
    created = call(http, "DatasetService/CreateDataset", {"dataset": {
        "displayName": "dogs", "family": "MODEL_FAMILY_SD15", "defaultRepeat": 2}}, key)
    assert created.status_code == 200 and created.headers["content-type"] == "application/json"
    name = created.json()["name"]
    assert name.startswith("datasets/") and created.json()["displayName"] == "dogs"
    got = call(http, "DatasetService/GetDataset", dpb.GetDatasetRequest(name=name).SerializeToString(), key,
               content_type="application/proto")
    assert got.status_code == 200 and got.headers["content-type"] == "application/proto"
    dataset = dpb.Dataset.FromString(got.content)
    assert (dataset.name, dataset.display_name, dataset.default_repeat) == (name, "dogs", 2)
    listed = call(http, "DatasetService/ListDatasets", {}, key).json()
    assert name in [d["name"] for d in listed["datasets"]]


def test_every_refused_key_gets_the_same_answer(http, gateway_dir):
    good = new_key(gateway_dir, "connect-refusals")
    revoked = new_key(gateway_dir, "connect-refusals")
    keys_cli(gateway_dir, "revoke", revoked)
    key_id = good.split("_")[1]
    answers = []
    for presented in (None, "not-a-key", f"kiln_{key_id}_{'x' * 32}", "kiln_0123456789ab_" + "y" * 32, revoked):
        answer = call(http, "DatasetService/ListDatasets", {}, presented)
        answers.append((answer.status_code, answer.json()["code"], answer.json()["message"]))
    assert answers == [(401, "unauthenticated", REFUSED)] * 5
    # A scheme other than Bearer is no key either.
    basic = call(http, "DatasetService/ListDatasets", {}, None, authorization=f"Basic {good}")
    assert (basic.status_code, basic.json()["message"]) == (401, REFUSED)
    assert call(http, "DatasetService/ListDatasets", {}, good).status_code == 200


def test_another_tenants_resources_answer_as_missing_ones(http, gateway_dir, dataset, gateway_channel, key):
    job = Client(gateway_channel, key).trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(
        training_job=tiny_job(dataset.name), validate_only=True))
    stranger = new_key(gateway_dir, "connect-stranger")
    for method, field, name in (("DatasetService/GetDataset", "name", dataset.name),
                                ("DatasetService/ListImages", "parent", dataset.name),
                                ("TrainerService/GetTrainingJob", "name", "trainingJobs/0123456789abcdef")):
        theirs = call(http, method, {field: name}, stranger)
        missing = call(http, method, {field: name[:-6] + "000000"}, stranger)
        assert theirs.status_code == missing.status_code == 404, method
        assert theirs.json()["code"] == "not_found"
        assert theirs.json()["message"].replace(name, "<name>") == \
            missing.json()["message"].replace(name[:-6] + "000000", "<name>")
    assert job.dataset == dataset.name  # the owner still sees it


def test_invalid_fields_come_back_as_bad_request_violations(http, key, dataset):
    job = json_format.MessageToDict(tiny_job(dataset.name, network_dim=0, unet_lr=-1.0))
    answer = call(http, "TrainerService/CreateTrainingJob", {"trainingJob": job}, key)
    assert answer.status_code == 400 and answer.json()["code"] == "invalid_argument"
    found = details(answer.json())
    assert found["google.rpc.ErrorInfo"].domain == "kiln.dev"
    assert {v.field for v in found["google.rpc.BadRequest"].field_violations} >= {
        "training_job.config.network_dim", "training_job.config.unet_lr"}


def test_bad_requests_get_precise_answers(http, key):
    wrong_type = call(http, "DatasetService/ListDatasets", b"{}", key, content_type="text/plain")
    assert wrong_type.status_code == 415
    broken = call(http, "DatasetService/GetDataset", b'{"name": ', key)
    assert broken.status_code == 400 and broken.json()["code"] == "invalid_argument"
    assert details(broken.json())["google.rpc.BadRequest"].field_violations[0].reason == "MALFORMED"
    unknown = call(http, "DatasetService/GetDataset", {"name": "datasets/x", "colour": "red"}, key)
    assert unknown.status_code == 400 and unknown.json()["code"] == "invalid_argument"
    assert "colour" in unknown.json()["message"]
    not_binary = call(http, "DatasetService/GetDataset", b"\xff\xff\xff", key, content_type="application/proto")
    assert not_binary.status_code == 400 and not_binary.json()["code"] == "invalid_argument"
    for path in ("/kiln.v1.DatasetService/NoSuchMethod", "/kiln.v1.NoSuchService/Get", "/"):
        assert http.post(path, content=b"{}", headers={"content-type": "application/json",
                                                        "authorization": f"Bearer {key}"}).status_code == 404
    # Client streams: browsers can't send them; the answer says what to do instead.
    uploading = call(http, "DatasetService/UploadImage", {}, key)
    assert uploading.status_code == 501 and uploading.json()["code"] == "unimplemented"
    assert "CreateImageUpload" in uploading.json()["message"]


def test_a_body_over_the_limit_is_refused_with_a_quota_failure(http, key, gateway):
    limit = gateway.components.settings.max_request_bytes
    assert limit == 4 * 1024 * 1024  # the default
    # Answered, not left hanging: the client's own timeout would fail the call otherwise.
    answer = call(http, "DatasetService/GetDataset", {"name": "d" * limit}, key)
    assert answer.status_code == 429 and answer.json()["code"] == "resource_exhausted"
    quota = details(answer.json())["google.rpc.QuotaFailure"]
    assert (quota.violations[0].subject, quota.violations[0].description) == ("tenant:connect", "max_request_bytes")
    # Sent without a length up front (chunked), it is refused as it is read.
    chunked = http.post("/kiln.v1.DatasetService/GetDataset", content=iter([b'{"name": "', b"d" * limit, b'"}']),
                        headers={"content-type": "application/json", "authorization": f"Bearer {key}"})
    assert chunked.status_code == 429 and chunked.json()["code"] == "resource_exhausted"
    assert call(http, "DatasetService/ListDatasets", {}, key).status_code == 200  # still serving


def test_a_browser_upload_form_admits_only_the_size_it_was_granted_for(http, key, gateway):
    limit = gateway.components.settings.max_upload_bytes
    created = call(http, "DatasetService/CreateDataset", {"dataset": {"displayName": "browser",
                                                                      "family": "MODEL_FAMILY_SD15"}}, key)
    asked = {"parent": created.json()["name"], "role": "IMAGE_ROLE_TRAINING", "filename": "cat.png"}
    answer = call(http, "DatasetService/CreateImageUpload", {**asked, "sizeBytes": str(limit + 1)}, key)
    assert answer.status_code == 429 and answer.json()["code"] == "resource_exhausted"
    assert details(answer.json())["google.rpc.QuotaFailure"].violations[0].description == "max_upload_bytes"
    data = image_bytes(96, 96, seed=21)
    granted = call(http, "DatasetService/CreateImageUpload", {**asked, "sizeBytes": str(len(data))}, key)
    assert granted.status_code == 200
    form = granted.json()

    def send(body: bytes) -> httpx.Response:
        # As a page sends it: multipart/form-data, the form's fields, then the file.
        return httpx.post(form["uploadUrl"], data=form["uploadFields"], files={"file": ("cat.png", body, "image/png")},
                          headers={"origin": ALLOWED_ORIGIN}, timeout=60)

    # The gateway checked the declared size against its limit; the object store holds the browser to it.
    refused = send(data + bytes(8 * 1024 * 1024))
    assert refused.status_code == 400 and "<Code>EntityTooLarge</Code>" in refused.text
    stored = send(data)
    assert stored.status_code == 204, stored.text
    assert stored.headers["access-control-allow-origin"] == ALLOWED_ORIGIN  # a page may read the answer
    image = call(http, "DatasetService/FinalizeImageUpload", {"name": form["name"]}, key)
    assert image.status_code == 200 and image.json()["filename"] == "cat.png"
    listed = call(http, "DatasetService/ListImages", {"parent": created.json()["name"]}, key).json()
    assert [i["name"] for i in listed["images"]] == [image.json()["name"]]


@pytest.fixture(scope="module")
def trained(http, key, dataset, gateway_channel, worker) -> tuple[str, list[pb.TrainingEvent]]:
    """A tiny training, watched through Connect from its start to its final event."""
    job = Client(gateway_channel, key).trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(
        training_job=tiny_job(dataset.name, epochs=1)))
    events, end = watch(http, key, job.name)
    assert "error" not in end, end
    return job.name, events


def test_a_training_is_watched_to_its_end_and_resumed_from_a_seq(http, key, trained):
    job, events = trained
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].HasField("queued") and events[-1].finished.state == State.STATE_SUCCEEDED
    assert any(e.HasField("progress") for e in events)
    middle = len(events) // 2
    resumed, end = watch(http, key, job, after_seq=middle)
    assert resumed == events[middle:] and "error" not in end


def test_a_client_that_leaves_a_stream_releases_it(http, key, dataset, gateway_channel, trainer):
    client = Client(gateway_channel, key)
    watches = "/kiln.v1.TrainerService/WatchTrainingJob"
    cancelled = value(scrape(trainer.server.metrics_url), RPC_COUNT, method=watches, code="CANCELLED")
    job = client.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(training_job=tiny_job(dataset.name)))
    request = envelope(json.dumps({"name": job.name}).encode())
    headers = {"content-type": "application/connect+json", "authorization": f"Bearer {key}"}
    with httpx.Client(base_url=http.base_url, timeout=60) as leaving, \
            leaving.stream("POST", "/kiln.v1.TrainerService/WatchTrainingJob", content=request,
                           headers=headers) as response:
        received = envelopes(response.iter_bytes())  # kept: closing it would close the stream
        flags, first = next(received)
        assert flags == 0 and "queued" in json.loads(first)
        # The key's one watch stream is this one: another is refused while it is open.
        with pytest.raises(grpc.RpcError) as refused:
            next(client.trainer.WatchTrainingJob(pb.WatchTrainingJobRequest(name=job.name)))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # The connection is closed: the gateway cancels the internal stream (the trainer service counts
    # it CANCELLED) and ends the call, freeing the key's slot.
    wait_until_served(trainer.server.metrics_url, watches, cancelled + 1, code="CANCELLED")
    deadline = time.monotonic() + 60
    while True:
        try:
            assert next(client.trainer.WatchTrainingJob(pb.WatchTrainingJobRequest(name=job.name))).seq == 1
            break
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline
    client.trainer.CancelTrainingJob(pb.CancelTrainingJobRequest(name=job.name))


def test_the_callers_deadline_ends_a_stream(http, key, dataset, gateway_channel):
    client = Client(gateway_channel, key)
    job = client.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(training_job=tiny_job(dataset.name)))
    try:
        _, end = watch(http, key, job.name, timeout_ms=500)
        assert end["error"]["code"] == "deadline_exceeded"
    finally:
        client.trainer.CancelTrainingJob(pb.CancelTrainingJobRequest(name=job.name))


def test_cors_preflights_and_answers(http, key):
    asked = {"access-control-request-method": "POST",
             "access-control-request-headers": "authorization, content-type, connect-protocol-version"}
    allowed = http.options("/kiln.v1.DatasetService/ListDatasets", headers={"origin": ALLOWED_ORIGIN, **asked})
    assert allowed.status_code == 204 and allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert {"authorization", "content-type", "connect-protocol-version", "connect-timeout-ms"} <= {
        h.strip() for h in allowed.headers["access-control-allow-headers"].split(",")}
    refused = http.options("/kiln.v1.DatasetService/ListDatasets", headers={"origin": "https://evil.example", **asked})
    assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers
    answered = call(http, "DatasetService/ListDatasets", {}, key, origin=ALLOWED_ORIGIN)
    assert answered.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "grpc-status-details-bin" in answered.headers["access-control-expose-headers"]
    elsewhere = call(http, "DatasetService/ListDatasets", {}, key, origin="https://evil.example")
    assert "access-control-allow-origin" not in elsewhere.headers


def test_calls_over_http_are_counted_in_the_gateways_metrics(gateway, http, key):
    def counted(code: str) -> float:
        return value(scrape(gateway.server.metrics_url), RPC_COUNT, method="/kiln.v1.DatasetService/GetDataset",
                     code=code)

    before = counted("UNAUTHENTICATED"), counted("NOT_FOUND")
    call(http, "DatasetService/GetDataset", {"name": "datasets/0123456789abcdef"}, None)
    call(http, "DatasetService/GetDataset", {"name": "datasets/0123456789abcdef"}, key)
    assert (counted("UNAUTHENTICATED"), counted("NOT_FOUND")) == (before[0] + 1, before[1] + 1)


def test_healthz_answers_the_gateways_readiness(http):
    answer = http.get("/healthz")
    assert (answer.status_code, answer.json()) == (200, {"status": "SERVING"})


def test_curl_calls_it_as_a_user_would(gateway, key, dataset, trained):
    base = f"http://{gateway.http_address}"
    unary = subprocess.run(["curl", "-sS", "--fail-with-body", "-H", f"Authorization: Bearer {key}", "-H",
                            "Content-Type: application/json", "-d", json.dumps({"name": dataset.name}),
                            f"{base}/kiln.v1.DatasetService/GetDataset"], capture_output=True, check=True, timeout=60)
    assert json.loads(unary.stdout)["name"] == dataset.name
    # A stream: the request and the answer are Connect envelopes (5 bytes: flags, length).
    name, events = trained
    streamed = subprocess.run(["curl", "-sS", "--fail-with-body", "-N", "-H", f"Authorization: Bearer {key}", "-H",
                               "Content-Type: application/connect+json", "--data-binary", "@-",
                               f"{base}/kiln.v1.TrainerService/WatchTrainingJob"],
                              input=envelope(json.dumps({"name": name}).encode()), capture_output=True, timeout=60)
    assert streamed.returncode == 0, streamed.stderr
    received = list(envelopes(iter([streamed.stdout])))
    assert [flags for flags, _ in received] == [0] * len(events) + [2]
    assert [as_message(json.loads(m), pb.TrainingEvent()) for _, m in received[:-1]] == events


def test_the_gateway_process_serves_both_sides_and_sigterm_stops_them(tmp_path):
    """`python -m services.gateway` with no arguments: gRPC and HTTP, both gone on SIGTERM (its
    internal services are never started here)."""
    grpc_port, http_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    env.update(KILN_DATA_DIR=str(tmp_path), KILN_INTERNAL_AUTH__TOKEN="token", KILN_JSON_LOGS="false",
               KILN_DATASET_ADDRESS="127.0.0.1:9", KILN_TRAINER_ADDRESS="127.0.0.1:9",
               KILN_SERVER__PORT=str(grpc_port), KILN_HTTP__PORT=str(http_port), KILN_METRICS__ENABLED="false",
               KILN_SERVER__SHUTDOWN_GRACE="5")
    process = subprocess.Popen([sys.executable, "-m", "services.gateway"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            changes = health.Watch(health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=60)
            next(c for c in changes if c.status == health_pb2.HealthCheckResponse.SERVING)
            changes.cancel()
        assert httpx.get(f"http://127.0.0.1:{http_port}/healthz").json() == {"status": "SERVING"}
        # The internal services are down: the caller is told which, and to retry, not their addresses.
        key = keys_cli(tmp_path, "create", "--tenant", "alone", "--name", "down")["secret_key"]
        down = httpx.post(f"http://127.0.0.1:{http_port}/kiln.v1.DatasetService/ListDatasets", content=b"{}",
                          headers={"content-type": "application/json", "authorization": f"Bearer {key}"})
        assert down.status_code == 503 and down.json()["code"] == "unavailable"
        assert down.json()["message"] == "the dataset service is unavailable; retry later"
        assert set(details(down.json())) == {"google.rpc.ErrorInfo", "google.rpc.RetryInfo"}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{http_port}/healthz")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("protocol", [ProtocolType.CONNECT, ProtocolType.GRPC_WEB])
def test_the_generated_connect_clients_call_it(gateway, key, dataset, trained, protocol):
    """kiln.v1's generated Connect clients (binary, gzip), over Connect and over gRPC-Web."""
    address, job = f"http://{gateway.http_address}", trained[0]
    headers = {"authorization": f"Bearer {key}"}
    with DatasetServiceClientSync(address, protocol=protocol) as datasets, \
            TrainerServiceClientSync(address, protocol=protocol) as trainer:
        assert datasets.get_dataset(dpb.GetDatasetRequest(name=dataset.name), headers=headers).name == dataset.name
        assert list(trainer.watch_training_job(pb.WatchTrainingJobRequest(name=job), headers=headers)) == trained[1]
        with pytest.raises(ConnectError) as caught:
            trainer.create_training_job(pb.CreateTrainingJobRequest(training_job=tiny_job(
                dataset.name, network_dim=0)), headers=headers)
        assert caught.value.code == Code.INVALID_ARGUMENT
        bad = [error_details_pb2.BadRequest.FromString(d.message_bytes) for d in caught.value.details
               if d.type_name == "google.rpc.BadRequest"]
        assert [v.field for v in bad[0].field_violations] == ["training_job.config.network_dim"]
        with pytest.raises(ConnectError) as refused:
            datasets.list_datasets(dpb.ListDatasetsRequest())
        assert (refused.value.code, refused.value.message) == (Code.UNAUTHENTICATED, REFUSED)


def _connect_answer(http: httpx.Client, key: str, method: str, request: Message) -> tuple[str, str]:
    """(code, message with ids blanked) of one call over Connect JSON; ("ok", "") when it succeeds."""
    service, descriptor = next((s, s.methods_by_name[method]) for s, _ in PUBLIC_SERVICES
                               if method in s.methods_by_name)
    if isinstance(request, Iterator):  # a client stream (UploadImage): its first message stands for it
        request = next(request)
    body = json.dumps(json_format.MessageToDict(request)).encode()
    path = f"/{service.full_name}/{method}"
    auth = {"authorization": f"Bearer {key}"}
    if descriptor.server_streaming:
        with http.stream("POST", path, content=envelope(body),
                         headers={**auth, "content-type": "application/connect+json"}) as response:
            flags, first = next(envelopes(response.iter_bytes()))
            answer = json.loads(first).get("error", {"code": "ok", "message": ""}) if flags & 0x02 else \
                {"code": "ok", "message": ""}
    else:
        answer = http.post(path, content=body, headers={**auth, "content-type": "application/json"}).json()
        answer = answer if "code" in answer else {"code": "ok", "message": ""}
    return answer["code"], re.sub(r"[0-9a-f]{8,64}", "<id>", answer["message"])


def test_every_method_over_connect_answers_another_tenants_resources_as_missing_ones(http, gateway_channel,
                                                                                     gateway_dir):
    owner = Client(gateway_channel, new_key(gateway_dir, "connect-matrix-owner"))
    created = owner.datasets.CreateDataset(dpb.CreateDatasetRequest(dataset=dpb.Dataset(
        display_name="mine", family=dpb.MODEL_FAMILY_SD15, default_repeat=1)))
    image = upload(owner.datasets, created.name, image_bytes(96, 96, seed=7), filename="a.png", tags=["mytrigger"])
    pending = owner.datasets.CreateImageUpload(dpb.CreateImageUploadRequest(
        parent=created.name, role=dpb.IMAGE_ROLE_TRAINING, filename="b.png", size_bytes=1000))
    snapshot = owner.datasets.CreateSnapshot(dpb.CreateSnapshotRequest(parent=created.name))
    job = owner.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(training_job=tiny_job(created.name)))
    names = matrix.Names(created.name, image.name, pending.name, snapshot.name, job.name,
                         *matrix.owned_webhook(owner))
    missing = matrix.Names(*(matrix.missing_name(value) for value in vars(names).values()))
    stranger = new_key(gateway_dir, "connect-matrix-stranger")
    try:
        answers = {method: (_connect_answer(http, stranger, method, build(names)),
                            _connect_answer(http, stranger, method, build(missing)))
                   for method, build in sorted(matrix.REQUESTS.items())}
    finally:
        with contextlib.suppress(grpc.RpcError):  # the worker may have trained it already
            owner.trainer.CancelTrainingJob(pb.CancelTrainingJobRequest(name=job.name))
    assert {m: a for m, a in answers.items() if a[0] != a[1]} == {}
    assert {m: a[0][0] for m, a in answers.items() if a[0][0] != "not_found"} == {
        "RetagImages": "failed_precondition", "UploadImage": "unimplemented"}
    assert owner.datasets.GetDataset(dpb.GetDatasetRequest(name=names.dataset)).display_name == "mine"
