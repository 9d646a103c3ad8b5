"""Every public method that names a resource, called with another tenant's key: the answer is
word for word the one for a resource that doesn't exist (names aside), and nothing of the owner's
changes. Methods that only list or create in the caller's own space have nothing to leak."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from kiln.v1 import dataset_pb2 as dpb
from kiln.v1 import trainer_pb2 as pb
from kiln.v1 import webhooks_pb2 as wpb
from services.gateway.server import PUBLIC_SERVICES
from tests.dataset.helpers import image_bytes, upload, upload_messages
from tests.gateway.conftest import Client
from tests.gateway.test_gateway import new_key
from tests.training_service.test_training_jobs import tiny_job

# Methods with no resource of another tenant to name: they act in the caller's own space.
OWN_SPACE = {"CreateDataset", "ListDatasets", "ListBaseModels", "GetBaseModel", "ListPresets", "GetPreset",
             "ListTrainingJobs", "ListModels", "CreateWebhookEndpoint", "ListWebhookEndpoints"}
# Published models need a trained epoch: their own test below trains one.
PUBLISHED = {"GetModel", "DeleteModel"}


# The dataset service here has no tagger: re-tagging is refused before any record is looked up,
# for every name alike.
BEFORE_ANY_LOOKUP = {"RetagImages": grpc.StatusCode.FAILED_PRECONDITION}


@dataclass(frozen=True)
class Names:
    dataset: str
    image: str
    upload: str
    snapshot: str
    job: str
    webhook_endpoint: str
    webhook_delivery: str


Request = Callable[[Names], Any]

REQUESTS: dict[str, Request] = {
    "GetDataset": lambda n: dpb.GetDatasetRequest(name=n.dataset),
    "UpdateDataset": lambda n: dpb.UpdateDatasetRequest(dataset=dpb.Dataset(name=n.dataset, display_name="x"),
                                                        update_mask=field_mask_pb2.FieldMask(paths=["display_name"])),
    "DeleteDataset": lambda n: dpb.DeleteDatasetRequest(name=n.dataset),
    "UploadImage": lambda n: upload_messages(n.dataset, image_bytes(64, 64, seed=9), filename="x.png"),
    "CreateImageUpload": lambda n: dpb.CreateImageUploadRequest(parent=n.dataset, role=dpb.IMAGE_ROLE_TRAINING,
                                                                filename="x.png", size_bytes=1000),
    "FinalizeImageUpload": lambda n: dpb.FinalizeImageUploadRequest(name=n.upload),
    "GetImage": lambda n: dpb.GetImageRequest(name=n.image),
    "ListImages": lambda n: dpb.ListImagesRequest(parent=n.dataset),
    "UpdateImage": lambda n: dpb.UpdateImageRequest(image=dpb.Image(name=n.image, repeat=3),
                                                    update_mask=field_mask_pb2.FieldMask(paths=["repeat"])),
    "DeleteImage": lambda n: dpb.DeleteImageRequest(name=n.image),
    "BatchDeleteImages": lambda n: dpb.BatchDeleteImagesRequest(parent=n.dataset, names=[n.image]),
    "ReadImage": lambda n: dpb.ReadImageRequest(name=n.image),
    "GetImageUrl": lambda n: dpb.GetImageUrlRequest(name=n.image),
    "CropImages": lambda n: dpb.CropImagesRequest(parent=n.dataset, names=[n.image], mode=dpb.CROP_MODE_CENTER,
                                                  target_width=64, target_height=64),
    "AddImageTags": lambda n: dpb.AddImageTagsRequest(name=n.image, tags=["intruder"]),
    "RemoveImageTags": lambda n: dpb.RemoveImageTagsRequest(name=n.image, tags=["mytrigger"]),
    "BatchEditTags": lambda n: dpb.BatchEditTagsRequest(parent=n.dataset, names=[n.image],
                                                        add=dpb.BatchEditTagsRequest.AddTag(tag="intruder")),
    "GetTagStatistics": lambda n: dpb.GetTagStatisticsRequest(parent=n.dataset),
    "RetagImages": lambda n: dpb.RetagImagesRequest(parent=n.dataset, names=[n.image],
                                                    merge=dpb.CAPTION_MERGE_OVERWRITE),
    "CreateSnapshot": lambda n: dpb.CreateSnapshotRequest(parent=n.dataset),
    "GetSnapshot": lambda n: dpb.GetSnapshotRequest(name=n.snapshot),
    "ListSnapshots": lambda n: dpb.ListSnapshotsRequest(parent=n.dataset),
    "CreateTrainingJob": lambda n: pb.CreateTrainingJobRequest(training_job=tiny_job(n.dataset)),
    "GetTrainingJob": lambda n: pb.GetTrainingJobRequest(name=n.job),
    "CancelTrainingJob": lambda n: pb.CancelTrainingJobRequest(name=n.job),
    "DeleteTrainingJob": lambda n: pb.DeleteTrainingJobRequest(name=n.job),
    "RetrainTrainingJob": lambda n: pb.RetrainTrainingJobRequest(name=n.job),
    "WatchTrainingJob": lambda n: pb.WatchTrainingJobRequest(name=n.job),
    "ListTrainingMetrics": lambda n: pb.ListTrainingMetricsRequest(name=n.job),
    "SendTrainingControl": lambda n: pb.SendTrainingControlRequest(
        name=n.job, control=pb.SendTrainingControlRequest.Control.CONTROL_SAMPLE_NOW),
    "ReadArtifact": lambda n: pb.ReadArtifactRequest(name=f"{n.job}/epochs/1/lora"),
    "GetArtifactUrl": lambda n: pb.GetArtifactUrlRequest(name=f"{n.job}/epochs/1/lora"),
    "GenerateImages": lambda n: pb.GenerateImagesRequest(training_job=n.job, epochs=[0]),
    "CreateModel": lambda n: pb.CreateModelRequest(model=pb.Model(display_name="stolen", training_job=n.job,
                                                                  epoch=1)),
    "GetWebhookEndpoint": lambda n: wpb.GetWebhookEndpointRequest(name=n.webhook_endpoint),
    "UpdateWebhookEndpoint": lambda n: wpb.UpdateWebhookEndpointRequest(
        webhook_endpoint=wpb.WebhookEndpoint(name=n.webhook_endpoint, description="intruder", enabled=False),
        update_mask=field_mask_pb2.FieldMask(paths=["description", "enabled"])),
    "DeleteWebhookEndpoint": lambda n: wpb.DeleteWebhookEndpointRequest(name=n.webhook_endpoint),
    "RotateWebhookSecret": lambda n: wpb.RotateWebhookSecretRequest(name=n.webhook_endpoint),
    "ListWebhookDeliveries": lambda n: wpb.ListWebhookDeliveriesRequest(parent=n.webhook_endpoint),
    "ReplayWebhookDelivery": lambda n: wpb.ReplayWebhookDeliveryRequest(name=n.webhook_delivery),
    "SendTestWebhook": lambda n: wpb.SendTestWebhookRequest(name=n.webhook_endpoint),
}


def missing_name(name: str) -> str:
    """The same name with every id replaced by one that names nothing."""
    return re.sub(r"/([0-9a-f]{8,64})", lambda m: "/" + "0" * len(m.group(1)), name)


def _answer(client: Client, method: str, request: Any) -> tuple[grpc.StatusCode, str]:
    stub = client.trainer if method in _TRAINER else client.webhooks if method in _WEBHOOKS else client.datasets
    try:
        reply = getattr(stub, method)(request)
        if isinstance(reply, Iterator):
            next(reply)
    except grpc.RpcError as error:
        return error.code(), re.sub(r"[0-9a-f]{8,64}", "<id>", error.details() or "")
    return grpc.StatusCode.OK, ""


_TRAINER = {m.name for service, _ in PUBLIC_SERVICES if service.name == "TrainerService" for m in service.methods}
_WEBHOOKS = {m.name for service, _ in PUBLIC_SERVICES if service.name == "WebhookService" for m in service.methods}


# The owner's webhook endpoint is on loopback (registrable here); the trainer sends nothing, so
# its test delivery stays as it was made.
WEBHOOK_OWNER_SETTINGS = {"webhook_allow_private_networks": True, "webhook_concurrency": 0}


@pytest.fixture(scope="module")
def trainer_overrides() -> dict[str, Any]:
    return WEBHOOK_OWNER_SETTINGS


def owned_webhook(client: Client) -> tuple[str, str]:
    """The names of a webhook endpoint of the client's tenant and of a delivery to it."""
    endpoint = client.webhooks.CreateWebhookEndpoint(wpb.CreateWebhookEndpointRequest(
        webhook_endpoint=wpb.WebhookEndpoint(url="http://127.0.0.1:9/hook", event_types=["training.succeeded"],
                                             description="mine")))
    delivery = client.webhooks.SendTestWebhook(wpb.SendTestWebhookRequest(name=endpoint.name))
    return endpoint.name, delivery.name


@pytest.fixture(scope="module")
def owner(gateway_channel, gateway_dir) -> tuple[Client, Names]:
    client = Client(gateway_channel, new_key(gateway_dir, "matrix-owner"))
    dataset = client.datasets.CreateDataset(dpb.CreateDatasetRequest(dataset=dpb.Dataset(
        display_name="mine", family=dpb.MODEL_FAMILY_SD15, default_repeat=1)))
    image = upload(client.datasets, dataset.name, image_bytes(96, 96, seed=4), filename="a.png", tags=["mytrigger"])
    pending = client.datasets.CreateImageUpload(dpb.CreateImageUploadRequest(
        parent=dataset.name, role=dpb.IMAGE_ROLE_TRAINING, filename="b.png", size_bytes=1000))
    snapshot = client.datasets.CreateSnapshot(dpb.CreateSnapshotRequest(parent=dataset.name))
    job = client.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(training_job=tiny_job(dataset.name)))
    return client, Names(dataset.name, image.name, pending.name, snapshot.name, job.name, *owned_webhook(client))


def test_every_method_covers_the_api():
    every = {m.name for service, _ in PUBLIC_SERVICES for m in service.methods}
    assert every == set(REQUESTS) | OWN_SPACE | PUBLISHED


def test_another_tenants_resources_answer_as_missing_ones_and_stay_untouched(owner, gateway_channel, gateway_dir):
    client, names = owner
    stranger = Client(gateway_channel, new_key(gateway_dir, "matrix-stranger"))
    missing = Names(*(missing_name(value) for value in vars(names).values()))
    answers = {method: (_answer(stranger, method, build(names)), _answer(stranger, method, build(missing)))
               for method, build in sorted(REQUESTS.items())}
    assert {m: a for m, a in answers.items() if a[0] != a[1]} == {}
    assert {m: a[0][0] for m, a in answers.items() if a[0][0] != grpc.StatusCode.NOT_FOUND} == BEFORE_ANY_LOOKUP
    # Nothing of the owner's changed.
    assert client.datasets.GetDataset(dpb.GetDatasetRequest(name=names.dataset)).display_name == "mine"
    image = client.datasets.GetImage(dpb.GetImageRequest(name=names.image))
    assert list(image.tags) == ["mytrigger"] and image.repeat == 0
    assert client.trainer.GetTrainingJob(pb.GetTrainingJobRequest(name=names.job)).state == \
        pb.TrainingJob.State.STATE_QUEUED
    assert [s.name for s in client.datasets.ListSnapshots(dpb.ListSnapshotsRequest(parent=names.dataset)).snapshots] \
        == [names.snapshot]
    endpoint = client.webhooks.GetWebhookEndpoint(wpb.GetWebhookEndpointRequest(name=names.webhook_endpoint))
    assert endpoint.description == "mine" and endpoint.enabled and not endpoint.HasField("previous_secret_expire_time")
    deliveries = client.webhooks.ListWebhookDeliveries(wpb.ListWebhookDeliveriesRequest(parent=endpoint.name))
    assert [(d.name, d.attempt_count) for d in deliveries.deliveries] == [(names.webhook_delivery, 0)]
    client.trainer.CancelTrainingJob(pb.CancelTrainingJobRequest(name=names.job))


def test_another_tenants_published_model_answers_as_a_missing_one(gateway_channel, gateway_dir, worker):
    owner = Client(gateway_channel, new_key(gateway_dir, "publisher"))
    stranger = Client(gateway_channel, new_key(gateway_dir, "model-stranger"))
    dataset = owner.datasets.CreateDataset(dpb.CreateDatasetRequest(dataset=dpb.Dataset(
        display_name="published", family=dpb.MODEL_FAMILY_SD15, default_repeat=1)))
    upload(owner.datasets, dataset.name, image_bytes(96, 96, seed=8), filename="a.png", tags=["mytrigger"])
    job = owner.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(training_job=tiny_job(dataset.name, epochs=1)))
    events = list(owner.trainer.WatchTrainingJob(pb.WatchTrainingJobRequest(name=job.name), timeout=300))
    assert events[-1].finished.state == pb.TrainingJob.State.STATE_SUCCEEDED
    model = owner.trainer.CreateModel(pb.CreateModelRequest(model=pb.Model(
        display_name="private cat", training_job=job.name, epoch=1)))
    requests = {"GetModel": lambda name: pb.GetModelRequest(name=name),
                "DeleteModel": lambda name: pb.DeleteModelRequest(name=name)}
    assert set(requests) == PUBLISHED
    answers = {method: (_answer(stranger, method, build(model.name)), _answer(stranger, method,
                                                                              build(missing_name(model.name))))
               for method, build in requests.items()}
    assert {m: a[0] for m, a in answers.items()} == {m: a[1] for m, a in answers.items()}
    assert {a[0][0] for a in answers.values()} == {grpc.StatusCode.NOT_FOUND}
    assert model.name not in [m.name for m in stranger.trainer.ListModels(pb.ListModelsRequest()).models]
    assert owner.trainer.GetModel(pb.GetModelRequest(name=model.name)) == model
