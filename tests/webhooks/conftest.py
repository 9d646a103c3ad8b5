"""Webhooks through the gateway, in front of a real trainer service (with its dispatcher) and
dataset service; a real receiver on 127.0.0.1 for the deliveries."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.gateway import conftest as gateway_fixtures
from tests.training_service import conftest as training
from tests.webhooks.receiver import Receiver

dataset_service = training.dataset_service
trainer = training.trainer
trainer_database = training.trainer_database
worker = training.worker
channels = training.channels
gateway = gateway_fixtures.gateway
gateway_dir = gateway_fixtures.gateway_dir
gateway_overrides = gateway_fixtures.gateway_overrides
gateway_channel = gateway_fixtures.gateway_channel

# Retries within a test's patience: three attempts, 0.3 s apart, no jitter; loopback allowed.
QUICK_WEBHOOKS: dict[str, Any] = {
    "webhook_allow_private_networks": True, "webhook_retry_schedule": [0, 0.3, 0.3], "webhook_retry_jitter": 0,
    "webhook_poll_seconds": 0.2, "webhook_timeout_seconds": 3, "webhook_lease_seconds": 5}


@pytest.fixture(scope="module")
def trainer_overrides() -> dict[str, Any]:
    return QUICK_WEBHOOKS


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running
