"""Test generations go before trainings on a free worker, so one tenant's pile of them is capped."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from kiln.v1 import trainer_pb2 as pb
from tests.training_service.conftest import assert_quota_failure
from tests.training_service.test_training_jobs import tiny_job

LIMIT = 2


@pytest.fixture(scope="module")
def trainer_overrides() -> dict[str, Any]:
    return {"max_queued_generations_per_tenant": LIMIT}


def test_a_tenants_waiting_generations_are_capped_with_a_quota_failure(tenant, other_tenant):
    """No worker here: the generations wait. Epoch 0 is the base model alone, valid for any job."""
    jobs = [t.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(training_job=tiny_job(t.dataset(images=1).name)))
            for t in (tenant, other_tenant)]

    def generate(who, job: pb.TrainingJob):  # the stream's first message: queued, or the refusal
        stream = who.trainer.GenerateImages(pb.GenerateImagesRequest(training_job=job.name, epochs=[0]))
        return stream, next(stream)

    waiting = [generate(tenant, jobs[0]) for _ in range(LIMIT)]
    assert all(first.HasField("queued") for _, first in waiting)
    with pytest.raises(grpc.RpcError) as caught:
        generate(tenant, jobs[0])
    assert_quota_failure(caught.value, "GENERATIONS_PER_TENANT", tenant.name)
    # Another tenant is not held to the first one's count.
    theirs, first = generate(other_tenant, jobs[1])
    assert first.HasField("queued")
    for stream, _ in [*waiting, (theirs, first)]:
        stream.cancel()
