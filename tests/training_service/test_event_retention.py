"""A long run's event log is bounded: the oldest events go, a watcher asking for them learns so
(OUT_OF_RANGE, naming where it can resume), and the job, its results and its metrics stay whole."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from kiln.v1 import dataset_pb2 as dpb
from kiln.v1 import trainer_pb2 as pb
from kiln.v1 import trainer_worker_pb2 as wpb
from kiln.v1 import trainer_worker_pb2_grpc
from services.common.errors import status_details
from services.common.internal_client import internal_channel
from services.trainer.server import TrainerService
from tests.servers import TEST_AUTH
from tests.training_service.test_training_jobs import tiny_job

KEEP = 10
STEPS = 40


@pytest.fixture(scope="module")
def trainer_overrides() -> dict[str, Any]:
    return {"events_kept_per_job": KEEP}


def progress(step: int) -> wpb.WorkerEvent:
    return wpb.WorkerEvent(index=step, progress=pb.TrainingProgress(
        phase="training", step=step, total_steps=STEPS, epoch=1, total_epochs=1, loss=1.0 / step))


def run_long_job(tenant, trainer: TrainerService) -> pb.TrainingJob:
    """A job whose worker (driven here through the worker API) reports STEPS steps, one at a time."""
    job = tenant.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(training_job=tiny_job(
        tenant.dataset(images=1).name)))
    with internal_channel(trainer.address, TEST_AUTH) as channel:
        workers = trainer_worker_pb2_grpc.TrainingWorkerServiceStub(channel)
        got = workers.ClaimTrainingJob(wpb.ClaimTrainingJobRequest(
            worker_id="steady", capabilities=wpb.WorkerCapabilities(families=[dpb.MODEL_FAMILY_SD15]),
            wait_seconds=10), timeout=30).assignment
        assert got.job == job.name
        for step in range(1, STEPS + 1):
            workers.ReportTrainingProgress(wpb.ReportTrainingProgressRequest(
                job=job.name, lease_id=got.lease_id, events=[progress(step)]), timeout=30)
        workers.FinishTrainingJob(wpb.FinishTrainingJobRequest(
            job=job.name, lease_id=got.lease_id, outcome=wpb.FinishTrainingJobRequest.OUTCOME_SUCCEEDED), timeout=30)
    return tenant.trainer.GetTrainingJob(pb.GetTrainingJobRequest(name=job.name))


def test_the_oldest_events_are_pruned_and_a_watcher_asking_for_them_is_told_where_to_resume(tenant, trainer):
    job = run_long_job(tenant, trainer)
    # queued, started, STEPS progress events, finished; at most KEEP and a quarter kept.
    assert job.state == pb.TrainingJob.State.STATE_SUCCEEDED
    assert job.last_event_seq >= STEPS + 3
    kept = job.last_event_seq - job.oldest_event_seq + 1
    assert KEEP <= kept <= KEEP + KEEP // 4 + 1

    with pytest.raises(grpc.RpcError) as caught:
        list(tenant.trainer.WatchTrainingJob(pb.WatchTrainingJobRequest(name=job.name, after_seq=1), timeout=30))
    assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE
    info, _ = status_details(caught.value)
    assert info is not None and info.reason == "SEQ_PRUNED"
    assert info.metadata["oldest_kept_seq"] == str(job.oldest_event_seq)

    # From 0: everything kept, contiguous, to the final event; resuming just before the oldest works.
    events = list(tenant.trainer.WatchTrainingJob(pb.WatchTrainingJobRequest(name=job.name), timeout=30))
    assert [e.seq for e in events] == list(range(job.oldest_event_seq, job.last_event_seq + 1))
    assert events[-1].HasField("finished")
    resumed = list(tenant.trainer.WatchTrainingJob(pb.WatchTrainingJobRequest(
        name=job.name, after_seq=job.oldest_event_seq - 1), timeout=30))
    assert resumed == events

    # The loss history is whole: every step, from the first.
    metrics = tenant.trainer.ListTrainingMetrics(pb.ListTrainingMetricsRequest(name=job.name)).metrics
    assert [m.step for m in metrics] == list(range(1, STEPS + 1))
