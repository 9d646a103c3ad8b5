"""The SDK against a real gateway in front of real dataset and trainer services, keys made with the
gateway's keys CLI."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from kiln import Client
from services.common.loop_thread import LoopThread
from services.common.settings import ServerSettings
from services.gateway.server import GatewayService, running_gateway
from services.gateway.settings import GatewaySettings
from tests.dataset.helpers import image_bytes
from tests.gateway import conftest as gateway_fixtures
from tests.gateway.conftest import keys_cli
from tests.servers import TEST_AUTH

dataset_service = gateway_fixtures.dataset_service
trainer = gateway_fixtures.trainer
trainer_database = gateway_fixtures.trainer_database
trainer_overrides = gateway_fixtures.trainer_overrides
gateway_dir = gateway_fixtures.gateway_dir
gateway_overrides = gateway_fixtures.gateway_overrides
gateway = gateway_fixtures.gateway


def new_key(gateway_dir: pathlib.Path, tenant: str) -> str:
    return str(keys_cli(gateway_dir, "create", "--tenant", tenant, "--name", f"sdk tests for {tenant}")["secret_key"])


@pytest.fixture(scope="module")
def api_key(gateway_dir: pathlib.Path) -> str:
    return new_key(gateway_dir, "sdk")


@pytest.fixture(scope="module")
def client(gateway: GatewayService, api_key: str) -> Iterator[Client]:
    with Client(gateway.address, api_key) as client:
        yield client


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def gateway_on(aio: LoopThread, port: int, gateway: GatewayService, **overrides: Any) -> Iterator[GatewayService]:
    """Another gateway replica on the module's database, at a fixed port (so it can come back there)."""
    base = gateway.components.settings
    settings = GatewaySettings(data_dir=base.data_dir, server=ServerSettings(host="127.0.0.1", port=port,
                                                                             shutdown_grace=0.5),
                               json_logs=False, internal_auth=TEST_AUTH, dataset_address=base.dataset_address,
                               trainer_address=base.trainer_address, **{"key_cache_seconds": 0, **overrides})
    with aio.context(running_gateway(settings)) as running:
        yield running


ROOT = pathlib.Path(__file__).resolve().parents[2]


@dataclass
class Cli:
    """`python -m kiln.cli …` as a user runs it, against the gateway with a key (from the environment)."""

    url: str
    api_key: str

    def __call__(self, *args: str | pathlib.Path, **env: str) -> subprocess.CompletedProcess[str]:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
        environment.update({"PYTHONPATH": os.pathsep.join((str(ROOT), str(ROOT / "sdk" / "python"))),
                            "KILN_URL": self.url, "KILN_API_KEY": self.api_key, **env})
        return subprocess.run([sys.executable, "-m", "kiln.cli", *map(str, args)], cwd=ROOT, env=environment,
                              capture_output=True, text=True, timeout=300)

    def json(self, *args: str | pathlib.Path) -> Any:
        done = self(*args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture(scope="module")
def cli(gateway: GatewayService, api_key: str) -> Cli:
    return Cli(gateway.address, api_key)


def photo_folder(folder: pathlib.Path, count: int, first_seed: int = 0) -> pathlib.Path:
    """`count` distinct PNG photos, each with its caption beside it (kohya-style)."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        (folder / f"photo{k}.png").write_bytes(image_bytes(96, 96, seed=first_seed + k))
        (folder / f"photo{k}.txt").write_text(f"mytrigger, pose{k}\n")
    return folder
