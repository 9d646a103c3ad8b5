"""The queue's order and ETAs (pure), and what a user sees of it through the service."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import grpc
import pytest

from kiln.v1 import dataset_pb2 as dpb
from kiln.v1 import trainer_pb2 as pb
from kiln.v1 import trainer_worker_pb2 as wpb
from kiln.v1 import trainer_worker_pb2_grpc
from services.common.errors import status_details
from services.common.internal_client import internal_channel
from services.trainer.queue_order import WaitingJob, finish_times, queue_order
from tests.servers import TEST_AUTH
from tests.training_service.conftest import assert_quota_failure
from tests.training_service.test_training_jobs import tiny_job

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def waiting(tenant: str, minute: int, seconds: float = 60.0) -> WaitingJob:
    return WaitingJob(f"{tenant}{minute}", tenant, T0 + dt.timedelta(minutes=minute), seconds)


def test_one_tenants_backlog_does_not_starve_another():
    backlog = [waiting("a", m) for m in range(20)]
    single = waiting("b", 30)
    order = [job.id for job in queue_order([*backlog, single], {})]
    assert order[:3] == ["a0", "b30", "a1"]
    assert order[3:] == [f"a{m}" for m in range(2, 20)]


def test_a_tenant_with_a_running_job_waits_behind_one_without():
    order = [job.id for job in queue_order([waiting("a", 1), waiting("b", 5)], {"a": 1})]
    assert order == ["b5", "a1"]


def test_first_in_first_out_within_a_tenant_and_by_submission_within_a_round():
    jobs = [waiting("c", 3), waiting("a", 2), waiting("b", 1), waiting("a", 4)]
    assert [job.id for job in queue_order(jobs, {})] == ["b1", "a2", "c3", "a4"]


def test_finish_times_follow_free_workers():
    jobs = [waiting("a", 1, 10), waiting("b", 2, 20), waiting("c", 3, 5)]
    # One worker busy for 30 more seconds, a second one free.
    assert finish_times(jobs, [30.0], workers=2) == [10.0, 30.0, 35.0]
    assert finish_times(jobs, [], workers=0) == [10.0, 30.0, 35.0]


def test_positions_follow_the_rule_and_move_as_jobs_leave(tenant, other_tenant):
    first_dataset, second_dataset = tenant.dataset(images=1), other_tenant.dataset(images=1)
    mine = [tenant.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(training_job=tiny_job(first_dataset.name)))
            for _ in range(3)]
    theirs = other_tenant.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(
        training_job=tiny_job(second_dataset.name)))
    positions = [tenant.trainer.GetTrainingJob(pb.GetTrainingJobRequest(name=j.name)).queue_position for j in mine]
    theirs_now = other_tenant.trainer.GetTrainingJob(pb.GetTrainingJobRequest(name=theirs.name))
    # Others' jobs queued earlier in this module come first; relative order is the rule's.
    assert positions[0] < theirs_now.queue_position < positions[1] < positions[2]
    assert theirs_now.eta_seconds > 0
    last_before = tenant.trainer.GetTrainingJob(pb.GetTrainingJobRequest(name=mine[2].name))
    tenant.trainer.CancelTrainingJob(pb.CancelTrainingJobRequest(name=mine[0].name))
    # The tenant's next job takes the cancelled one's round: it moves ahead, the other's job stays.
    after = {j.name: tenant.trainer.GetTrainingJob(pb.GetTrainingJobRequest(name=j.name)).queue_position
             for j in mine[1:]}
    stays = other_tenant.trainer.GetTrainingJob(pb.GetTrainingJobRequest(name=theirs.name))
    assert after[mine[1].name] == positions[0] and stays.queue_position == theirs_now.queue_position
    assert after[mine[2].name] == last_before.queue_position - 1
    # A watcher saw it move: the stream stays open while the job waits, so read up to that event.
    stream = tenant.trainer.WatchTrainingJob(pb.WatchTrainingJobRequest(name=mine[2].name), timeout=30)
    positions_seen = []
    for event in stream:
        assert event.HasField("queued")
        positions_seen.append(event.queued.position)
        if positions_seen[-2:] == [positions[2], after[mine[2].name]]:
            break
    stream.cancel()
    # Placed when created, pushed back one by the other tenant's job, moved up by the cancel.
    assert positions_seen == [positions[2] - 1, positions[2], positions[2] - 1]
    for job in mine[1:]:
        tenant.trainer.CancelTrainingJob(pb.CancelTrainingJobRequest(name=job.name))
    other_tenant.trainer.CancelTrainingJob(pb.CancelTrainingJobRequest(name=theirs.name))


def test_the_per_tenant_queue_limit_is_refused_with_a_quota_failure(tenant, trainer):
    limit = trainer.components.settings.max_queued_jobs_per_tenant
    dataset = tenant.dataset(images=1)
    jobs = [tenant.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(training_job=tiny_job(dataset.name)))
            for _ in range(limit)]
    with pytest.raises(grpc.RpcError) as caught:
        tenant.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(training_job=tiny_job(dataset.name)))
    assert_quota_failure(caught.value, "QUEUED_JOBS_PER_TENANT", tenant.name)
    for job in jobs:
        tenant.trainer.CancelTrainingJob(pb.CancelTrainingJobRequest(name=job.name))


def test_a_worker_whose_lease_ran_out_can_no_longer_touch_its_job(tenant, trainer):
    """A worker alive but silent too long (paused, partitioned): once another worker holds the job,
    every report and outcome of the old one is refused with LEASE_LOST."""
    dataset = tenant.dataset(images=1)
    job = tenant.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(training_job=tiny_job(dataset.name)))
    with internal_channel(trainer.address, TEST_AUTH) as channel:
        workers = trainer_worker_pb2_grpc.TrainingWorkerServiceStub(channel)
        capabilities = wpb.WorkerCapabilities(families=[dpb.MODEL_FAMILY_SD15])

        def claim(worker: str) -> wpb.TrainingAssignment:
            while True:  # other tests' jobs may be ahead in this module's queue: take until ours
                got = workers.ClaimTrainingJob(wpb.ClaimTrainingJobRequest(
                    worker_id=worker, capabilities=capabilities, wait_seconds=10), timeout=30).assignment
                if got.job == job.name:
                    return got
                workers.FinishTrainingJob(wpb.FinishTrainingJobRequest(
                    job=got.job, lease_id=got.lease_id, outcome=wpb.FinishTrainingJobRequest.OUTCOME_CANCELLED))

        stale = claim("paused")
        workers.ReportTrainingProgress(wpb.ReportTrainingProgressRequest(job=job.name, lease_id=stale.lease_id))
        # The paused worker stays silent: its lease runs out and the job waits again.
        stream = tenant.trainer.WatchTrainingJob(pb.WatchTrainingJobRequest(name=job.name), timeout=60)
        requeued = next(e for e in stream if e.HasField("requeued"))
        stream.cancel()
        assert "paused" in requeued.requeued.reason
        fresh = claim("rescuer")
        assert fresh.attempt == 2 and fresh.lease_id != stale.lease_id
        for call, request in [
            (workers.ReportTrainingProgress, wpb.ReportTrainingProgressRequest(job=job.name, lease_id=stale.lease_id)),
            (workers.FinishTrainingJob, wpb.FinishTrainingJobRequest(
                job=job.name, lease_id=stale.lease_id, outcome=wpb.FinishTrainingJobRequest.OUTCOME_SUCCEEDED)),
        ]:
            with pytest.raises(grpc.RpcError) as caught:
                call(request, timeout=30)
            info, _ = status_details(caught.value)
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION and info.reason == "LEASE_LOST"
        assert tenant.trainer.GetTrainingJob(pb.GetTrainingJobRequest(name=job.name)).worker == "rescuer"
        workers.FinishTrainingJob(wpb.FinishTrainingJobRequest(
            job=job.name, lease_id=fresh.lease_id, outcome=wpb.FinishTrainingJobRequest.OUTCOME_CANCELLED))
    assert tenant.trainer.GetTrainingJob(pb.GetTrainingJobRequest(name=job.name)).state == \
        pb.TrainingJob.State.STATE_CANCELLED


def test_a_job_that_needs_a_gpu_is_queued_by_a_service_without_one_and_goes_only_to_a_gpu_worker(tenant, trainer):
    """fp16 needs CUDA: the service (which trains nothing) queues it; a CPU worker is never given it."""
    job = tenant.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(
        training_job=tiny_job(tenant.dataset(images=1).name, mixed_precision="fp16")))
    assert job.config.mixed_precision == "fp16"
    with internal_channel(trainer.address, TEST_AUTH) as channel:
        workers = trainer_worker_pb2_grpc.TrainingWorkerServiceStub(channel)

        def claims(device: str) -> Iterator[wpb.TrainingAssignment]:
            """What a worker with `device` is handed until the queue has nothing more for it."""
            while True:
                got = workers.ClaimTrainingJob(wpb.ClaimTrainingJobRequest(
                    worker_id=f"{device}-worker", wait_seconds=0, capabilities=wpb.WorkerCapabilities(
                        families=[dpb.MODEL_FAMILY_SD15], device=device)), timeout=30).assignment
                if not got.job:
                    return
                yield got
                workers.FinishTrainingJob(wpb.FinishTrainingJobRequest(
                    job=got.job, lease_id=got.lease_id, outcome=wpb.FinishTrainingJobRequest.OUTCOME_CANCELLED))

        assert job.name not in [got.job for got in claims("cpu")]
        assert job.name in [got.job for got in claims("cuda")]


def test_a_claim_asked_again_after_its_answer_was_lost_gets_the_same_assignment(tenant, trainer):
    job = tenant.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(training_job=tiny_job(
        tenant.dataset(images=1).name)))
    with internal_channel(trainer.address, TEST_AUTH) as channel:
        workers = trainer_worker_pb2_grpc.TrainingWorkerServiceStub(channel)
        capabilities = wpb.WorkerCapabilities(families=[dpb.MODEL_FAMILY_SD15])
        claim_id = "0123456789abcdef0123456789abcdef"

        def claim(claim_id: str) -> wpb.TrainingAssignment:
            return workers.ClaimTrainingJob(wpb.ClaimTrainingJobRequest(
                worker_id="flaky-network", capabilities=capabilities, claim_id=claim_id, wait_seconds=10),
                timeout=30).assignment

        while (first := claim(claim_id)).job != job.name:  # others' jobs first, each under a new claim
            workers.FinishTrainingJob(wpb.FinishTrainingJobRequest(
                job=first.job, lease_id=first.lease_id, outcome=wpb.FinishTrainingJobRequest.OUTCOME_CANCELLED))
            claim_id = claim_id[1:] + claim_id[0]
        again = claim(claim_id)
        assert again == first and first.lease_id == claim_id and first.attempt == 1
        assert tenant.trainer.GetTrainingJob(pb.GetTrainingJobRequest(name=job.name)).attempt_count == 1
        with pytest.raises(grpc.RpcError) as caught:
            claim("NOT-an-id")
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        workers.FinishTrainingJob(wpb.FinishTrainingJobRequest(
            job=job.name, lease_id=first.lease_id, outcome=wpb.FinishTrainingJobRequest.OUTCOME_CANCELLED))
