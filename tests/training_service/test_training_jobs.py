"""A job submitted through gRPC runs on a real worker process and streams what it does."""

from __future__ import annotations

import grpc
import pytest
import safetensors.torch

from kiln.v1 import trainer_pb2 as pb
from services.common.errors import status_details
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
