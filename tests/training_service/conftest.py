"""A dataset service, a trainer service and real worker processes, over real sockets, on the
session's SeaweedFS; SQLite by default, PostgreSQL where a test asks for it."""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from kiln.v1 import dataset_pb2 as dpb
from kiln.v1 import dataset_pb2_grpc, trainer_pb2_grpc
from services.common.errors import status_details
from services.common.internal_client import internal_channel, tenant_metadata
from services.common.loop_thread import LoopThread
from services.common.objectstore import ObjectStore
from services.common.settings import ObjectStoreSettings, ServerSettings
from services.dataset.server import DatasetService, running_dataset_service
from services.trainer.server import TrainerService, running_trainer_service
from services.trainer.service_settings import TrainerServiceSettings
from tests.dataset.conftest import make_settings
from tests.dataset.helpers import image_bytes, upload
from tests.servers import TEST_AUTH, TEST_INTERNAL_TOKEN

ROOT = pathlib.Path(__file__).resolve().parents[2]


def trainer_settings(data_dir: pathlib.Path, s3: ObjectStoreSettings, models_dir: pathlib.Path, dataset_address: str,
                     **overrides: Any) -> TrainerServiceSettings:
    values: dict[str, Any] = {
        "server": ServerSettings(port=0, shutdown_grace=1.0), "json_logs": False, "internal_auth": TEST_AUTH,
        "models_dir": models_dir, "dataset_address": dataset_address, "training_lease_seconds": 4.0,
        "queue_maintenance_seconds": 0.5, "watch_poll_seconds": 0.5, **overrides}
    return TrainerServiceSettings(data_dir=data_dir, s3=s3, **values)


@pytest.fixture(scope="module")
def dataset_service(aio: LoopThread, store: ObjectStore, s3_settings: ObjectStoreSettings,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatasetService]:
    settings = make_settings(tmp_path_factory.mktemp("dataset"), s3_settings)
    with aio.context(running_dataset_service(settings, store)) as running:
        yield running


@pytest.fixture(scope="module")
def trainer_database(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The trainer's database URL; a module parametrizes this to run on PostgreSQL too."""
    return f"sqlite:///{tmp_path_factory.mktemp('trainer-db') / 'trainer.db'}"


def database_of(kind: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> str:
    if kind == "postgresql":
        cluster = request.getfixturevalue("postgres")
        return str(cluster.create_database(f"trainer_{uuid.uuid4().hex[:8]}"))
    return f"sqlite:///{tmp_path_factory.mktemp('trainer-db') / 'trainer.db'}"


@pytest.fixture(scope="module")
def trainer_overrides() -> dict[str, Any]:
    """Settings a module gives its trainer service (a module overrides this fixture)."""
    return {}


@pytest.fixture(scope="module")
def trainer(aio: LoopThread, store: ObjectStore, s3_settings: ObjectStoreSettings, models_dir: pathlib.Path,
            dataset_service: DatasetService, trainer_database: str, trainer_overrides: dict[str, Any],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainerService]:
    settings = trainer_settings(tmp_path_factory.mktemp("trainer"), s3_settings, models_dir, dataset_service.address,
                                trainer_database_url=trainer_database, **trainer_overrides)
    with aio.context(running_trainer_service(settings, store)) as running:
        yield running


class Tenant:
    """Stubs whose every call acts for one tenant, as the gateway's calls will."""

    def __init__(self, channel: grpc.Channel, dataset_channel: grpc.Channel, name: str) -> None:
        self.name = name
        self._metadata = tenant_metadata(name)
        self.trainer = WithMetadata(trainer_pb2_grpc.TrainerServiceStub(channel), self._metadata)
        self.datasets = WithMetadata(dataset_pb2_grpc.DatasetServiceStub(dataset_channel), self._metadata)

    def dataset(self, images: int = 2, family: int = dpb.MODEL_FAMILY_SD15) -> dpb.Dataset:
        dataset = self.datasets.CreateDataset(dpb.CreateDatasetRequest(dataset=dpb.Dataset(
            display_name="cats", family=family, default_repeat=1)))
        for seed in range(images):
            upload(self.datasets, dataset.name, image_bytes(96, 96, seed=seed), filename=f"cat{seed}.png",
                   tags=["mytrigger", f"pose{seed}"])
        return dataset


class WithMetadata:
    def __init__(self, stub: Any, metadata: tuple[tuple[str, str], ...]) -> None:
        self._stub = stub
        self._metadata = metadata

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)

        def call(request: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("metadata", self._metadata)
            kwargs.setdefault("timeout", 60)
            return method(request, **kwargs)

        call.with_call = getattr(method, "with_call", None)  # type: ignore[attr-defined]
        return call


@pytest.fixture(scope="module")
def channels(trainer: TrainerService, dataset_service: DatasetService) -> Iterator[tuple[grpc.Channel, grpc.Channel]]:
    with internal_channel(trainer.address, TEST_AUTH) as channel, \
            internal_channel(dataset_service.address, TEST_AUTH) as dataset_channel:
        yield channel, dataset_channel


@pytest.fixture
def tenant(channels: tuple[grpc.Channel, grpc.Channel], request: pytest.FixtureRequest) -> Tenant:
    return Tenant(*channels, name=f"t-{abs(hash(request.node.nodeid)) % 10**8}")


@pytest.fixture
def other_tenant(channels: tuple[grpc.Channel, grpc.Channel], request: pytest.FixtureRequest) -> Tenant:
    return Tenant(*channels, name=f"o-{abs(hash(request.node.nodeid)) % 10**8}")


def worker_environment(trainer_address: str, s3: ObjectStoreSettings, models_dir: pathlib.Path,
                       **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("KILN_")}
    env.update({
        "KILN_TRAINER_ADDRESS": trainer_address, "KILN_MODELS_DIR": str(models_dir),
        "KILN_S3__ENDPOINT": s3.endpoint, "KILN_S3__ACCESS_KEY": s3.access_key,
        "KILN_S3__SECRET_KEY": s3.secret_key.get_secret_value(), "KILN_S3__BUCKET": s3.bucket,
        "KILN_INTERNAL_AUTH__TOKEN": TEST_INTERNAL_TOKEN, "KILN_JSON_LOGS": "false",
        "KILN_CLAIM_WAIT_SECONDS": "2", "KILN_HEARTBEAT_SECONDS": "1",
        # Two cores for the whole test run: one training thread each.
        "OMP_NUM_THREADS": "1", **extra})
    return env


@contextlib.contextmanager
def worker_process(trainer_address: str, s3: ObjectStoreSettings, models_dir: pathlib.Path,
                   worker_id: str, **extra: str) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m services.trainer.worker`, as an operator starts it."""
    env = worker_environment(trainer_address, s3, models_dir, KILN_WORKER_ID=worker_id, **extra)
    process = subprocess.Popen([sys.executable, "-m", "services.trainer.worker"], cwd=ROOT, env=env)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def trainer_process(data_dir: pathlib.Path, database_url: str, s3: ObjectStoreSettings, models_dir: pathlib.Path,
                    dataset_address: str, port: int, metrics_port: int,
                    **extra: str) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m services.trainer`, as deployed (a replica that can be killed with -9), serving;
    `extra` adds environment variables."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("KILN_")}
    env.update({
        "KILN_DATA_DIR": str(data_dir), "KILN_TRAINER_DATABASE_URL": database_url,
        "KILN_S3__ENDPOINT": s3.endpoint, "KILN_S3__ACCESS_KEY": s3.access_key,
        "KILN_S3__SECRET_KEY": s3.secret_key.get_secret_value(), "KILN_S3__BUCKET": s3.bucket,
        "KILN_MODELS_DIR": str(models_dir), "KILN_DATASET_ADDRESS": dataset_address,
        "KILN_INTERNAL_AUTH__TOKEN": TEST_INTERNAL_TOKEN, "KILN_JSON_LOGS": "false",
        "KILN_SERVER__PORT": str(port), "KILN_METRICS__PORT": str(metrics_port),
        "KILN_TRAINING_LEASE_SECONDS": "4", "KILN_QUEUE_MAINTENANCE_SECONDS": "0.5",
        "KILN_WATCH_POLL_SECONDS": "0.5", **extra})
    process = subprocess.Popen([sys.executable, "-m", "services.trainer"], cwd=ROOT, env=env)
    try:
        with internal_channel(f"127.0.0.1:{port}", TEST_AUTH) as channel:
            changes = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(),
                                                                wait_for_ready=True, timeout=90)
            next(c for c in changes if c.status == health_pb2.HealthCheckResponse.SERVING)
            changes.cancel()
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def worker(trainer: TrainerService, s3_settings: ObjectStoreSettings,
           models_dir: pathlib.Path) -> Iterator[subprocess.Popen[bytes]]:
    with worker_process(trainer.address, s3_settings, models_dir, "worker-a") as process:
        yield process


def assert_quota_failure(error: grpc.RpcError, reason: str, tenant: str) -> None:
    """RESOURCE_EXHAUSTED with `reason` and a QuotaFailure naming the tenant."""
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info, _ = status_details(error)
    assert info is not None and info.reason == reason
    status = rpc_status.from_call(error)
    quota = error_details_pb2.QuotaFailure()
    assert status is not None and any(d.Unpack(quota) for d in status.details if d.Is(quota.DESCRIPTOR))
    assert quota.violations[0].subject == f"tenant:{tenant}"
