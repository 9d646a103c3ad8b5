"""Two trainer-service replicas on one PostgreSQL: concurrent claims never hand out a job twice,
and a replica that dies loses nothing."""

from __future__ import annotations

import concurrent.futures
import contextlib

import pytest

from kiln.v1 import dataset_pb2 as dpb
from kiln.v1 import trainer_pb2 as pb
from kiln.v1 import trainer_worker_pb2 as wpb
from kiln.v1 import trainer_worker_pb2_grpc
from services.common.internal_client import internal_channel
from services.common.ports import free_ports
from services.trainer.server import running_trainer_service
from tests.common.metrics_helpers import RPC_COUNT, scrape, value
from tests.servers import TEST_AUTH
from tests.training_service.conftest import Tenant, database_of, trainer_process, trainer_settings, worker_process
from tests.training_service.test_training_jobs import kinds, tiny_job

JOBS = 12


@pytest.fixture(scope="module")
def trainer_database(request, tmp_path_factory) -> str:
    return database_of("postgresql", tmp_path_factory, request)


def test_concurrent_claims_on_two_replicas_take_each_job_once(aio, store, s3_settings, models_dir, dataset_service,
                                                              trainer, trainer_database, tenant, tmp_path):
    dataset = tenant.dataset(images=1)
    created = [tenant.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(training_job=tiny_job(dataset.name)))
               for _ in range(JOBS)]
    settings = trainer_settings(tmp_path, s3_settings, models_dir, dataset_service.address,
                                trainer_database_url=trainer_database, max_running_jobs_per_tenant=JOBS)
    # Two more replicas on the same database, where every job may run at once: the claims race.
    with aio.context(running_trainer_service(settings, store)) as first, \
            aio.context(running_trainer_service(settings.model_copy(update={"data_dir": tmp_path / "b"}),
                                                store)) as second, contextlib.ExitStack() as stack:
        stubs = [trainer_worker_pb2_grpc.TrainingWorkerServiceStub(stack.enter_context(
            internal_channel(address, TEST_AUTH))) for address in (first.address, second.address)]

        def claim(index: int) -> str:
            request = wpb.ClaimTrainingJobRequest(
                worker_id=f"w{index}", capabilities=wpb.WorkerCapabilities(families=[dpb.MODEL_FAMILY_SD15]))
            response = stubs[index % 2].ClaimTrainingJob(request, timeout=30)
            return response.assignment.job

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            claimed = [job for job in pool.map(claim, range(3 * JOBS)) if job]
    assert sorted(claimed) == sorted(job.name for job in created)
    states = [tenant.trainer.GetTrainingJob(pb.GetTrainingJobRequest(name=job.name)) for job in created]
    assert sum(s.state == pb.TrainingJob.State.STATE_RUNNING for s in states) == len(claimed)
    for job in created:  # their claimers never report: they end when their leases run out
        tenant.trainer.CancelTrainingJob(pb.CancelTrainingJobRequest(name=job.name))


def test_a_replica_killed_mid_run_loses_nothing(trainer, trainer_database, tenant, channels, s3_settings,
                                                models_dir, dataset_service, tmp_path):
    """The worker spreads its calls over two replicas; one is killed (-9) while the job trains. The
    job finishes in its first attempt, a watcher of the other replica sees every event once, and a
    job created through the dead replica is still there."""
    port, metrics_port = free_ports(2)
    dataset = tenant.dataset(images=1)
    with trainer_process(tmp_path / "doomed", trainer_database, s3_settings, models_dir, dataset_service.address,
                         port, metrics_port) as doomed, internal_channel(f"127.0.0.1:{port}", TEST_AUTH) as channel:
        through_doomed = Tenant(channel, channels[1], tenant.name)
        job = through_doomed.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(
            training_job=tiny_job(dataset.name, epochs=3)))
        replicas = f"127.0.0.1:{port},{trainer.address}"
        with worker_process(replicas, s3_settings, models_dir, "spread"):
            stream = tenant.trainer.WatchTrainingJob(pb.WatchTrainingJobRequest(name=job.name), timeout=300)
            events = []
            for event in stream:
                events.append(event)
                if event.HasField("epoch_saved"):
                    break
            reports = "/kiln.v1.TrainingWorkerService/ReportTrainingProgress"
            assert value(scrape(f"http://127.0.0.1:{metrics_port}/metrics"), RPC_COUNT, method=reports) > 0
            doomed.kill()
            doomed.wait()
            events += list(stream)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert kinds(events).count("started") == 1 and "requeued" not in kinds(events)
    assert events[-1].finished.state == pb.TrainingJob.State.STATE_SUCCEEDED
    done = tenant.trainer.GetTrainingJob(pb.GetTrainingJobRequest(name=job.name))
    assert done.attempt_count == 1 and [e.epoch for e in done.epochs] == [1, 2, 3]
