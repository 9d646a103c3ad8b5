"""The TypeScript SDK under Node against a live gateway over the Connect protocol.

sdk/typescript/test/live.test.ts (node --test) creates a dataset, uploads through signed upload forms,
trains a tiny job and follows its stream to the end, resumes and reconnects watches (after a broken
connection, and after a stream the server ended cleanly before the final event), verifies a webhook delivery,
and reads the errors; it writes what it saw as JSON lines, checked here, some against the
services themselves.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
from typing import Any

import grpc
import pytest

from kiln.v1 import dataset_pb2 as dpb
from kiln.v1 import trainer_pb2 as pb
from kiln.v1 import webhooks_pb2 as wpb
from services.gateway.server import GatewayService
from tests.dataset.helpers import image_bytes
from tests.gateway.conftest import Client, keys_cli

ROOT = pathlib.Path(__file__).resolve().parents[2]
SDK = ROOT / "sdk" / "typescript"
LIVE_TEST = SDK / "dist-test" / "test" / "live.test.js"
EXAMPLE = SDK / "dist-test" / "examples" / "train.js"

Report = list[dict[str, Any]]


@pytest.fixture(scope="module")
def api_key(gateway_dir: pathlib.Path) -> str:
    return str(keys_cli(gateway_dir, "create", "--tenant", "typescript", "--name", "node sdk")["secret_key"])


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("images")
    for seed in range(2):
        (folder / f"cat{seed}.png").write_bytes(image_bytes(96, 96, seed=seed))
    return folder


def run_node(script: pathlib.Path, *args: str, node_options: tuple[str, ...] = (),
             **env: str) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    assert node, "Node 20 is needed for the TypeScript SDK"
    assert script.exists(), "build sdk/typescript first (`make test` does: npm ci, npm run build)"
    environment = {key: value for key, value in os.environ.items() if not key.startswith("KILN_")}
    return subprocess.run([node, *node_options, str(script), *args], cwd=SDK, env={**environment, **env},
                          capture_output=True, text=True, timeout=240, check=False)


@pytest.fixture(scope="module")
def report(gateway: GatewayService, api_key: str, worker: object, images: pathlib.Path,
           tmp_path_factory: pytest.TempPathFactory) -> Report:
    report_path = tmp_path_factory.mktemp("node") / "report.jsonl"
    done = run_node(LIVE_TEST, node_options=("--test", "--test-concurrency=1", "--test-timeout=200000"),
                    KILN_HTTP_URL=f"http://{gateway.http_address}", KILN_API_KEY=api_key, KILN_TEST_IMAGES=str(images),
                    KILN_TEST_REPORT=str(report_path))
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    return [json.loads(line) for line in report_path.read_text().splitlines()]


def cases(report: Report, name: str) -> Report:
    return [line for line in report if line["case"] == name]


def one(report: Report, name: str) -> dict[str, Any]:
    [line] = cases(report, name)
    return line


@pytest.fixture(scope="module")
def client(gateway: GatewayService, api_key: str) -> Any:
    with grpc.insecure_channel(gateway.address) as channel:
        yield Client(channel, api_key)


def test_images_uploaded_through_upload_forms_are_in_the_dataset(report: Report, client: Client) -> None:
    uploaded = cases(report, "uploaded")
    assert [u["filename"] for u in uploaded] == ["cat0.png", "cat1.png"]
    [dataset] = {u["dataset"] for u in uploaded}
    listed = client.datasets.ListImages(dpb.ListImagesRequest(parent=dataset))
    assert sorted(i.name for i in listed.images) == sorted(u["image"] for u in uploaded)
    assert {i.filename: list(i.tags) for i in listed.images} == {"cat0.png": ["mytrigger", "pose0"],
                                                                 "cat1.png": ["mytrigger", "pose1"]}


def test_the_training_stream_arrives_whole_and_in_order_to_the_final_event(report: Report, client: Client) -> None:
    events = cases(report, "event")
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(events) + 1))
    assert events[0]["kind"] == "queued" and events[-1] == {"case": "event", "seq": len(events), "kind": "finished",
                                                             "state": "SUCCEEDED"}
    assert [e["epoch"] for e in events if e["kind"] == "epochSaved"] == [1, 2]
    assert [e["step"] for e in events if e["kind"] == "progress" and e["phase"] == "training"] == [1, 2, 3, 4]
    finished = one(report, "finished")
    assert finished["state"] == "SUCCEEDED" and finished["epochs"] == [1, 2]
    assert finished["job"] == one(report, "created")["job"] and finished["lastEventSeq"] == len(events)
    # The services agree with what the client saw.
    job = client.trainer.GetTrainingJob(pb.GetTrainingJobRequest(name=finished["job"]))
    assert job.state == pb.TrainingJob.STATE_SUCCEEDED and job.last_event_seq == len(events)


def test_a_watch_resumes_after_the_seq_it_is_given(report: Report) -> None:
    total = len(cases(report, "event"))
    assert one(report, "resumed")["seqs"] == list(range(4, total + 1))


def test_a_broken_watch_reconnects_from_its_last_seq(report: Report) -> None:
    reconnected = one(report, "reconnected")
    assert reconnected["connections"] == 2
    assert reconnected["seqs"] == list(range(1, len(cases(report, "event")) + 1))


def test_a_watch_the_server_ends_early_resumes_from_its_last_seq_to_the_final_event(report: Report) -> None:
    ended = one(report, "ended_early")
    total = len(cases(report, "event"))
    # The first stream ended cleanly after two events; the second asked for what came after seq 2.
    assert ended["connections"] == 2
    assert [int(r.get("afterSeq", 0)) for r in ended["requests"]] == [0, 2]
    assert ended["seqs"] == list(range(1, total + 1))
    assert ended["lastKind"] == "finished" and ended["state"] == "SUCCEEDED"


def test_a_watch_after_the_final_event_of_a_finished_job_ends_without_reconnecting(report: Report) -> None:
    assert one(report, "after_final") == {"case": "after_final", "connections": 1, "events": 0}


def test_binary_protobuf_over_connect_node_reads_the_job(report: Report) -> None:
    assert one(report, "binary") == {"case": "binary", "job": one(report, "created")["job"], "state": "SUCCEEDED"}


def test_an_invalid_request_is_an_error_with_its_field_violations(report: Report) -> None:
    invalid = one(report, "invalid")
    assert invalid["code"] == "InvalidArgument"
    assert {v["field"] for v in invalid["violations"]} == {"dataset.display_name"}
    assert invalid["message"].startswith("[invalid_argument] ")
    assert "dataset.display_name: 1..200 printable characters" in invalid["message"]


def test_an_upload_the_store_refuses_is_an_error_naming_its_s3_code_and_files_nothing(report: Report,
                                                                                      client: Client) -> None:
    refused = one(report, "refused_upload")
    assert (refused["code"], refused["reason"]) == ("PermissionDenied", "SignatureDoesNotMatch")
    assert refused["message"].startswith("[permission_denied] the object store refused the upload with HTTP 403: "
                                         "SignatureDoesNotMatch: ")
    listed = client.datasets.ListImages(dpb.ListImagesRequest(parent=refused["dataset"]))
    assert "tampered.png" not in {i.filename for i in listed.images}


def test_a_page_posting_the_upload_form_itself_is_held_to_the_declared_size(report: Report, client: Client) -> None:
    sent = one(report, "upload_form")
    assert sent["fields"] == sorted(["key", "policy", "x-amz-algorithm", "x-amz-credential", "x-amz-date",
                                     "x-amz-signature"])
    assert sent["tooLarge"]["code"] == "InvalidArgument" and sent["tooLarge"]["reason"] == "EntityTooLarge"
    assert sent["tooLarge"]["message"].startswith("[invalid_argument] the object store refused the upload with "
                                                  "HTTP 400: EntityTooLarge: ")
    image = client.datasets.GetImage(dpb.GetImageRequest(name=sent["image"]))
    assert image.filename == "by-hand.png" and image.name.startswith(sent["dataset"] + "/images/")


def test_a_webhook_delivery_verifies_with_its_endpoints_secret(report: Report, client: Client) -> None:
    webhook = one(report, "webhook")
    assert webhook["secretPrefix"] == "whsec_"
    assert webhook["event"]["type"] == "webhook.test" and webhook["event"]["data"] == {"name": webhook["endpoint"]}
    assert webhook["webhookId"] == webhook["eventId"]
    deliveries = client.webhooks.ListWebhookDeliveries(wpb.ListWebhookDeliveriesRequest(parent=webhook["endpoint"]))
    assert [d.name for d in deliveries.deliveries] == [webhook["delivery"]]


def test_a_wrong_key_is_unauthenticated(report: Report) -> None:
    assert one(report, "unauthenticated")["code"] == "Unauthenticated"


def test_every_violation_of_a_request_is_decoded_and_in_the_message(report: Report) -> None:
    invalid = one(report, "invalid_config")
    assert invalid["code"] == "InvalidArgument"
    fields = {v["field"] for v in invalid["violations"]}
    assert fields >= {"training_job.config.network_dim", "training_job.config.unet_lr"}
    for field in fields:
        assert f"{field}: " in invalid["message"]


def test_the_example_trains_a_folder(gateway: GatewayService, api_key: str, worker: object,
                                     images: pathlib.Path) -> None:
    done = run_node(EXAMPLE, str(images), "mytrigger", KILN_HTTP_URL=f"http://{gateway.http_address}",
                    KILN_API_KEY=api_key)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert [line.split(" as ")[0] for line in lines[:2]] == ["uploaded cat0.png", "uploaded cat1.png"]
    assert any(" epoch 2 saved: " in line for line in lines)
    assert lines[-1].endswith(": SUCCEEDED, 2 epochs")
