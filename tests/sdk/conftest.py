"""The SDK against a real gateway in front of real dataset and trainer services, keys made with the
gateway's keys CLI."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from kiln import Client
from services.gateway.server import GatewayService
from tests.dataset.helpers import image_bytes
from tests.gateway import conftest as gateway_fixtures
from tests.gateway.conftest import keys_cli

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


def photo_folder(folder: pathlib.Path, count: int, first_seed: int = 0) -> pathlib.Path:
    """`count` distinct PNG photos, each with its caption beside it (kohya-style)."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        (folder / f"photo{k}.png").write_bytes(image_bytes(96, 96, seed=first_seed + k))
        (folder / f"photo{k}.txt").write_text(f"mytrigger, pose{k}\n")
    return folder
