"""A gateway in front of a real dataset service and trainer service, keys made with its CLI."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from kiln.v1 import dataset_pb2_grpc, trainer_pb2_grpc, webhooks_pb2_grpc
from services.common.loop_thread import LoopThread
from services.common.settings import ServerSettings
from services.dataset.server import DatasetService
from services.gateway.server import GatewayService, running_gateway
from services.gateway.settings import GatewaySettings
from services.trainer.server import TrainerService
from tests.servers import TEST_AUTH
from tests.training_service import conftest as training
from tests.training_service.conftest import WithMetadata

ROOT = pathlib.Path(__file__).resolve().parents[2]
# The services behind the gateway, as the trainer's tests run them.
dataset_service = training.dataset_service
trainer = training.trainer
trainer_database = training.trainer_database
trainer_overrides = training.trainer_overrides
# A worker process training for the trainer service behind the gateway (requested by the tests that train).
worker = training.worker


@pytest.fixture(scope="module")
def gateway_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("gateway")


@pytest.fixture(scope="module")
def gateway_overrides() -> dict[str, Any]:
    """Settings a module gives its gateway (a module overrides this fixture)."""
    return {}


@pytest.fixture(scope="module")
def gateway(aio: LoopThread, gateway_dir: pathlib.Path, dataset_service: DatasetService,
            trainer: TrainerService, gateway_overrides: dict[str, Any]) -> Iterator[GatewayService]:
    # Every check reaches the database: a key revoked by the CLI is refused on the next call.
    values: dict[str, Any] = {"key_cache_seconds": 0, **gateway_overrides}
    settings = GatewaySettings(data_dir=gateway_dir, server=ServerSettings(port=0, shutdown_grace=1.0),
                               json_logs=False, internal_auth=TEST_AUTH, dataset_address=dataset_service.address,
                               trainer_address=trainer.address, **values)
    with aio.context(running_gateway(settings)) as running:
        yield running


def keys_cli(gateway_dir: pathlib.Path, *args: str) -> Any:
    """`python -m services.gateway keys … --json`, as an operator runs it on the gateway's data."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    env.update(KILN_DATA_DIR=str(gateway_dir), KILN_JSON_LOGS="false")
    done = subprocess.run([sys.executable, "-m", "services.gateway", "keys", *args, "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


class Client:
    """Stubs calling the gateway with one API key, as a customer's backend does."""

    def __init__(self, channel: grpc.Channel, key: str | None, *extra: tuple[str, str]) -> None:
        metadata = ((("authorization", f"Bearer {key}"),) if key else ()) + extra
        self.datasets = WithMetadata(dataset_pb2_grpc.DatasetServiceStub(channel), metadata)
        self.trainer = WithMetadata(trainer_pb2_grpc.TrainerServiceStub(channel), metadata)
        self.webhooks = WithMetadata(webhooks_pb2_grpc.WebhookServiceStub(channel), metadata)


@pytest.fixture(scope="module")
def gateway_channel(gateway: GatewayService) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gateway.address) as channel:
        yield channel
