"""Workers that die, jobs cancelled while they wait or run, live controls, retraining, many watchers."""

from __future__ import annotations

import concurrent.futures

import psutil
import pytest
import safetensors.torch

from kiln.v1 import trainer_pb2 as pb
from tests.training_service.conftest import database_of, worker_process
from tests.training_service.test_training_jobs import tiny_job, watch_all

State = pb.TrainingJob.State


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def trainer_database(request, tmp_path_factory) -> str:
    return database_of(request.param, tmp_path_factory, request)
Control = pb.SendTrainingControlRequest.Control


def lora_tensors(tenant, name: str) -> dict:
    chunks = list(tenant.trainer.ReadArtifact(pb.ReadArtifactRequest(name=name)))
    return safetensors.torch.load(b"".join(c.chunk for c in chunks[1:]))


def _ended(process: psutil.Process, timeout: float = 20) -> bool:
    try:
        process.wait(timeout)
    except psutil.TimeoutExpired:
        return process.status() == psutil.STATUS_ZOMBIE
    return True


def first(events, kind: str):
    return next(e for e in events if e.HasField(kind))


def test_a_job_whose_worker_is_killed_resumes_on_another_and_ends_equal(tenant, trainer, s3_settings, models_dir,
                                                                        request):
    dataset = tenant.dataset()
    job_request = tiny_job(dataset.name, epochs=3)
    killed = tenant.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(training_job=job_request))
    with worker_process(trainer.address, s3_settings, models_dir, "doomed") as doomed:
        stream = tenant.trainer.WatchTrainingJob(pb.WatchTrainingJobRequest(name=killed.name), timeout=300)
        seen = []
        for event in stream:
            seen.append(event)
            if event.HasField("started"):
                # The doomed worker has its job: the reference run goes to the module's worker,
                # starting now, which takes the killed job over once its lease has run out.
                uninterrupted = tenant.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(
                    training_job=job_request))
                request.getfixturevalue("worker")
            if event.HasField("epoch_saved"):
                break  # mid-run: one epoch saved, two to go
        stream.cancel()
        children = psutil.Process(doomed.pid).children(recursive=True)
        doomed.kill()
        doomed.wait()
        # The training process goes with its worker: nobody trains on under a lost lease.
        # (An exited child whose parent died may stay a zombie until something reaps it.)
        assert children and all(_ended(child) for child in children)
    events = watch_all(tenant, killed.name)
    watch_all(tenant, uninterrupted.name)
    assert events[:len(seen)] == seen
    assert events[-1].finished.state == State.STATE_SUCCEEDED
    requeued = first(events, "requeued").requeued
    assert requeued.resume_from_epoch == 1 and "doomed" in requeued.reason
    starts = [e.started for e in events if e.HasField("started")]
    assert [(s.worker, s.attempt, s.resumed_from_epoch) for s in starts] == [("doomed", 1, 0), ("worker-a", 2, 1)]
    job = tenant.trainer.GetTrainingJob(pb.GetTrainingJobRequest(name=killed.name))
    reference = tenant.trainer.GetTrainingJob(pb.GetTrainingJobRequest(name=uninterrupted.name))
    assert job.attempt_count == 2 and [e.epoch for e in job.epochs] == [1, 2, 3]
    resumed = lora_tensors(tenant, job.epochs[-1].lora.name)
    straight = lora_tensors(tenant, reference.epochs[-1].lora.name)
    assert resumed.keys() == straight.keys()
    assert all((resumed[k] == straight[k]).all() for k in resumed)


def test_cancel_a_queued_job_and_a_running_one_keeping_its_epochs(tenant, worker):
    dataset = tenant.dataset()
    running = tenant.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(
        training_job=tiny_job(dataset.name, epochs=40)))
    stream = tenant.trainer.WatchTrainingJob(pb.WatchTrainingJobRequest(name=running.name), timeout=300)
    steps_after_cancel: list[int] = []
    for event in stream:
        if event.HasField("started"):
            # The only worker is busy: a job submitted now waits, and leaves the queue at once.
            waiting = tenant.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(
                training_job=tiny_job(dataset.name)))
            cancelled = tenant.trainer.CancelTrainingJob(pb.CancelTrainingJobRequest(name=waiting.name))
            assert cancelled.state == State.STATE_CANCELLED
            assert watch_all(tenant, waiting.name)[-1].finished.state == State.STATE_CANCELLED
        if event.HasField("epoch_saved") and event.epoch_saved.epoch == 1 and not steps_after_cancel:
            tenant.trainer.SendTrainingControl(pb.SendTrainingControlRequest(
                name=running.name, control=Control.CONTROL_SAMPLE_NOW))
        if event.HasField("previews_rendered"):
            rendered = event.previews_rendered
            assert len(rendered.previews) == 4 and all(p.thumbnail for p in rendered.previews)
            cancel_at = tenant.trainer.CancelTrainingJob(pb.CancelTrainingJobRequest(name=running.name))
            assert cancel_at.state == State.STATE_RUNNING
            steps_after_cancel.append(rendered.step)
        elif steps_after_cancel and event.HasField("progress") and event.progress.phase == "training":
            steps_after_cancel.append(event.progress.step)
        if event.HasField("finished"):
            assert event.finished.state == State.STATE_CANCELLED
            break
    # Stopped within a couple of steps (the report that carries the cancel, then one step).
    assert len(steps_after_cancel) <= 4
    job = tenant.trainer.GetTrainingJob(pb.GetTrainingJobRequest(name=running.name))
    assert job.state == State.STATE_CANCELLED and job.epochs and job.epochs[0].epoch == 1
    assert lora_tensors(tenant, job.epochs[0].lora.name)


def test_retrain_with_overrides_and_many_watchers(tenant, worker):
    dataset = tenant.dataset()
    original = tenant.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(training_job=tiny_job(dataset.name)))
    retrained = tenant.trainer.RetrainTrainingJob(pb.RetrainTrainingJobRequest(
        name=original.name, training_job=pb.TrainingJob(config=pb.TrainingConfig(epochs=1, unet_lr=5e-4)),
        update_mask={"paths": ["config.epochs", "config.unet_lr"]}))
    assert retrained.retrained_from == original.name and retrained.snapshot == original.snapshot
    assert retrained.config.epochs == 1 and retrained.config.unet_lr == 5e-4
    assert retrained.config.network_dim == original.config.network_dim and retrained.config.seed == 5
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        streams = list(pool.map(lambda _: watch_all(tenant, retrained.name), range(20)))
        watch_all(tenant, original.name)
    assert all(s == streams[0] for s in streams)
    assert streams[0][-1].finished.state == State.STATE_SUCCEEDED
    assert [e.epoch_saved.epoch for e in streams[0] if e.HasField("epoch_saved")] == [1]
