"""A job submitted through gRPC runs on a real worker process and streams what it does."""

from __future__ import annotations

import dataclasses
import io

import grpc
import pytest
import safetensors.torch
from PIL import Image

from kiln.v1 import trainer_pb2 as pb
from kiln.v1 import trainer_pb2_grpc
from services.common.errors import status_details
from services.common.internal_client import internal_aio_channel, tenant_metadata
from services.trainer.engine.generation import GenerationRequest, generate
from services.trainer.engine.model_store import ModelStore
from services.trainer.engine.publishing import read_metadata
from tests.servers import TEST_AUTH
from tests.training_service.conftest import Tenant, database_of

State = pb.TrainingJob.State


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def trainer_database(request, tmp_path_factory) -> str:
    return database_of(request.param, tmp_path_factory, request)


def tiny_job(dataset: str, epochs: int = 2, **config: object) -> pb.TrainingJob:
    return pb.TrainingJob(
        display_name="cat lora", dataset=dataset, preset="presets/demo-tiny-sd15",
        basic=pb.BasicSettings(epochs=epochs, repeat=1, preview_prompt="mytrigger, pose0"),
        config=pb.TrainingConfig(seed=5, preview=pb.PreviewConfig(count=4, steps=2), **config))


def watch_all(tenant: Tenant, name: str, after: int = 0) -> list[pb.TrainingEvent]:
    return list(tenant.trainer.WatchTrainingJob(pb.WatchTrainingJobRequest(name=name, after_seq=after), timeout=300))


def kinds(events: list[pb.TrainingEvent]) -> list[str]:
    return [str(e.WhichOneof("kind")) for e in events]


def test_a_job_trains_on_a_worker_and_streams_its_progress_and_previews(tenant, worker):
    dataset = tenant.dataset()
    job = tenant.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(training_job=tiny_job(dataset.name),
                                                                       request_id="first"))
    assert job.state in (State.STATE_QUEUED, State.STATE_RUNNING)
    assert job.snapshot.startswith(dataset.name + "/snapshots/")
    assert job.config.epochs == 2 and job.config.network_dim == 8 and job.config.seed == 5
    assert job.estimate.total_steps == 4 and job.estimate.formula_steps == 4

    events = watch_all(tenant, job.name)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    seen = kinds(events)
    assert seen[0] == "queued" and "started" in seen and seen[-1] == "finished"
    assert events[-1].finished.state == State.STATE_SUCCEEDED
    saved = [e.epoch_saved for e in events if e.HasField("epoch_saved")]
    assert [s.epoch for s in saved] == [1, 2]
    for result in saved:
        assert len(result.previews) == 4 and all(p.thumbnail for p in result.previews)
        assert [p.seed for p in result.previews] == [1234, 1235, 1236, 1237]
    steps = [e.progress.step for e in events if e.HasField("progress") and e.progress.phase == "training"]
    assert steps == [1, 2, 3, 4]

    # A reconnecting watcher gets exactly what followed the last event it saw.
    assert watch_all(tenant, job.name, after=3) == events[3:]
    assert watch_all(tenant, job.name, after=len(events)) == []

    final = tenant.trainer.GetTrainingJob(pb.GetTrainingJobRequest(name=job.name))
    assert final.state == State.STATE_SUCCEEDED and final.attempt_count == 1
    assert [e.epoch for e in final.epochs] == [1, 2]
    metrics = tenant.trainer.ListTrainingMetrics(pb.ListTrainingMetricsRequest(name=job.name))
    assert [m.step for m in metrics.metrics] == [1, 2, 3, 4]
    assert all(m.loss > 0 and "unet" in m.learning_rates for m in metrics.metrics)

    chunks = list(tenant.trainer.ReadArtifact(pb.ReadArtifactRequest(name=final.epochs[1].lora.name)))
    assert chunks[0].artifact.size_bytes == final.epochs[1].lora.size_bytes
    weights = safetensors.torch.load(b"".join(c.chunk for c in chunks[1:]))
    assert any(key.startswith("lora_unet_") for key in weights)

    # The same request_id answers the first job again.
    again = tenant.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(training_job=tiny_job(dataset.name),
                                                                         request_id="first"))
    assert again.name == job.name


def test_validate_only_answers_the_estimate_and_queues_nothing(tenant):
    dataset = tenant.dataset()
    answer = tenant.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(
        training_job=tiny_job(dataset.name, epochs=3), validate_only=True))
    assert answer.name == "" and answer.estimate.total_steps == 6 and answer.estimate.gpu_seconds > 0
    assert answer.config.epochs == 3 and answer.config.base_model == "baseModels/tiny-sd15"
    assert not tenant.trainer.ListTrainingJobs(pb.ListTrainingJobsRequest()).training_jobs


def test_every_invalid_field_is_named_at_once(tenant):
    dataset = tenant.dataset()
    job = tiny_job(dataset.name, epochs=0, unet_lr=-1.0, network_dim=0)
    with pytest.raises(grpc.RpcError) as caught:
        tenant.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(training_job=job))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, violations = status_details(caught.value)
    fields = {v.field for v in violations}
    assert {"training_job.basic.epochs", "training_job.config.unet_lr", "training_job.config.network_dim"} <= fields


def test_another_tenants_job_does_not_exist(tenant, other_tenant):
    dataset = tenant.dataset()
    job = tenant.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(
        training_job=tiny_job(dataset.name), validate_only=False))
    for call, request in [
        (other_tenant.trainer.GetTrainingJob, pb.GetTrainingJobRequest(name=job.name)),
        (other_tenant.trainer.CancelTrainingJob, pb.CancelTrainingJobRequest(name=job.name)),
        (other_tenant.trainer.DeleteTrainingJob, pb.DeleteTrainingJobRequest(name=job.name)),
        (other_tenant.trainer.ListTrainingMetrics, pb.ListTrainingMetricsRequest(name=job.name)),
        (other_tenant.trainer.RetrainTrainingJob, pb.RetrainTrainingJobRequest(name=job.name)),
        (other_tenant.trainer.SendTrainingControl, pb.SendTrainingControlRequest(
            name=job.name, control=pb.SendTrainingControlRequest.Control.CONTROL_SAMPLE_NOW)),
        (other_tenant.trainer.GetArtifactUrl, pb.GetArtifactUrlRequest(name=f"{job.name}/epochs/1/lora")),
        (lambda r: list(other_tenant.trainer.ReadArtifact(r)),
         pb.ReadArtifactRequest(name=f"{job.name}/epochs/1/lora")),
        (lambda r: list(other_tenant.trainer.GenerateImages(r)), pb.GenerateImagesRequest(training_job=job.name)),
        (other_tenant.trainer.CreateModel, pb.CreateModelRequest(model=pb.Model(
            display_name="theirs", training_job=job.name, epoch=1))),
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            call(request)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as caught:
        watch_all(other_tenant, job.name)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # Not another tenant's dataset either.
    with pytest.raises(grpc.RpcError) as caught:
        other_tenant.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(training_job=tiny_job(dataset.name)))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    tenant.trainer.CancelTrainingJob(pb.CancelTrainingJobRequest(name=job.name))


def test_publish_an_epoch_download_it_and_load_it_in_diffusers(tenant, other_tenant, worker, models_dir):
    dataset = tenant.dataset()
    job = tenant.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(training_job=tiny_job(dataset.name, epochs=1)))
    assert watch_all(tenant, job.name)[-1].finished.state == State.STATE_SUCCEEDED
    spec = pb.Model(display_name="Cat v1", description="a cat, for tests", training_job=job.name, epoch=1,
                    showcase_previews=[2, 0], visibility=pb.Model.Visibility.VISIBILITY_PUBLIC)
    model = tenant.trainer.CreateModel(pb.CreateModelRequest(model=spec, request_id="publish-1"))
    assert model.name.startswith("models/") and model.trigger_words == ["mytrigger"]
    assert [a.name for a in model.showcase] == [f"{model.name}/images/0", f"{model.name}/images/1"]
    assert tenant.trainer.CreateModel(pb.CreateModelRequest(model=spec, request_id="publish-1")) == model

    data = b"".join(c.chunk for c in list(tenant.trainer.ReadArtifact(pb.ReadArtifactRequest(
        name=model.file.name)))[1:])
    metadata = read_metadata(data)
    assert metadata["modelspec.title"] == "Cat v1" and metadata["modelspec.trigger_phrase"] == "mytrigger"
    assert metadata["modelspec.description"] == "a cat, for tests"
    assert metadata["modelspec.thumbnail"].startswith("data:image/jpeg;base64,")
    # The published file is a LoRA diffusers applies in full (the engine checks every module took).
    request = GenerationRequest(base_model="tiny-sd15", prompt="mytrigger, pose0", lora=data, steps=2, seed=3)
    with_lora = generate(request, ModelStore(models_dir))[0]
    without = generate(dataclasses.replace(request, strength=0.0), ModelStore(models_dir))[0]
    assert with_lora.tobytes() != without.tobytes()

    # Public: another tenant sees it, but can't delete it.
    assert other_tenant.trainer.GetModel(pb.GetModelRequest(name=model.name)).display_name == "Cat v1"
    listed = other_tenant.trainer.ListModels(pb.ListModelsRequest(include_public=True)).models
    assert model.name in [m.name for m in listed]
    assert not other_tenant.trainer.ListModels(pb.ListModelsRequest()).models
    with pytest.raises(grpc.RpcError) as caught:
        other_tenant.trainer.DeleteModel(pb.DeleteModelRequest(name=model.name))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    with pytest.raises(grpc.RpcError) as caught:
        tenant.trainer.CreateModel(pb.CreateModelRequest(model=spec))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    missing = pb.Model(display_name="Cat v9", training_job=job.name, epoch=9)
    with pytest.raises(grpc.RpcError) as caught:
        tenant.trainer.CreateModel(pb.CreateModelRequest(model=missing))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    tenant.trainer.DeleteModel(pb.DeleteModelRequest(name=model.name))
    with pytest.raises(grpc.RpcError) as caught:
        tenant.trainer.GetModel(pb.GetModelRequest(name=model.name))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_test_generation_and_a_comparison_grid_run_on_the_worker(tenant, worker):
    dataset = tenant.dataset()
    job = tenant.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(training_job=tiny_job(dataset.name)))
    assert watch_all(tenant, job.name)[-1].finished.state == State.STATE_SUCCEEDED

    single = pb.GenerateImagesRequest(training_job=job.name, epochs=[2], strengths=[0.8], prompts=["mytrigger"],
                                      seed=11, steps=3, count=2, request_id="try-1")
    answers = list(tenant.trainer.GenerateImages(single, timeout=300))
    images = [a.image for a in answers if a.HasField("image")]
    assert [(i.index, i.seed, i.epoch, i.strength) for i in images] == [(0, 11, 2, 0.8), (1, 12, 2, 0.8)]
    pictures = [read_png(tenant, i.image.name) for i in images]
    assert pictures[0].size == (64, 64) and pictures[0].tobytes() != pictures[1].tobytes()
    # The same request_id follows the same run: the same images, not new ones.
    again = [a.image for a in tenant.trainer.GenerateImages(single, timeout=300) if a.HasField("image")]
    assert again == images

    grid = pb.GenerateImagesRequest(training_job=job.name, epochs=[0, 1, 2], strengths=[0.5, 1.0], steps=2)
    answers = list(tenant.trainer.GenerateImages(grid, timeout=300))
    cells = [(a.image.row, a.image.column) for a in answers if a.HasField("image")]
    assert sorted(cells) == [(r, c) for r in range(3) for c in range(2)]
    assert answers[-1].HasField("sheet")
    sheet = read_png(tenant, answers[-1].sheet.name)
    assert sheet.width > 2 * 64 and sheet.height > 3 * 64

    with pytest.raises(grpc.RpcError) as caught:
        list(tenant.trainer.GenerateImages(pb.GenerateImagesRequest(training_job=job.name, epochs=[9])))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as caught:
        list(tenant.trainer.GenerateImages(pb.GenerateImagesRequest(training_job=job.name, steps=-1,
                                                                    strengths=[1.0, 0.5], prompts=["a", "b"])))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, violations = status_details(caught.value)
    assert {"steps", "prompts"} <= {v.field for v in violations}


def read_png(tenant: Tenant, name: str) -> Image.Image:
    chunks = list(tenant.trainer.ReadArtifact(pb.ReadArtifactRequest(name=name)))
    return Image.open(io.BytesIO(b"".join(c.chunk for c in chunks[1:])))


def test_an_internal_asyncio_channel_carries_the_credential_on_every_kind_of_call(aio, trainer):
    """The gateway will call with grpc.aio: streams must carry the credential as unary calls do."""
    async def call_both() -> list[grpc.StatusCode]:
        channel = internal_aio_channel(trainer.address, TEST_AUTH)
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        codes = []
        try:
            for call in (lambda: stub.GetTrainingJob(pb.GetTrainingJobRequest(name="trainingJobs/abc"),
                                                     metadata=tenant_metadata("x")),
                         lambda: _drain(stub.WatchTrainingJob(pb.WatchTrainingJobRequest(name="trainingJobs/abc"),
                                                              metadata=tenant_metadata("x")))):
                try:
                    await call()
                except grpc.aio.AioRpcError as err:
                    codes.append(err.code())
        finally:
            await channel.close()
        return codes

    assert aio.run(call_both()) == [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.NOT_FOUND]


async def _drain(stream) -> None:
    async for _ in stream:
        pass
