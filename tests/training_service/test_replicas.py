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
from services.trainer.server import running_trainer_service
from tests.servers import TEST_AUTH
from tests.training_service.conftest import database_of, trainer_settings
from tests.training_service.test_training_jobs import tiny_job

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
