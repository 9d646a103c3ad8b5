"""The gateway in front of real dataset and trainer services, as tests/gateway runs it, and a worker that trains."""

from typing import Any

import pytest

from tests.gateway.conftest import (  # noqa: F401  (fixtures, found by name)
    dataset_service,
    gateway,
    gateway_dir,
    gateway_overrides,
    trainer,
    trainer_database,
)
from tests.training_service.conftest import worker  # noqa: F401


@pytest.fixture(scope="module")
def trainer_overrides() -> dict[str, Any]:
    """Webhooks may reach the test's receiver on loopback, and are sent within a test's patience."""
    return {"webhook_allow_private_networks": True, "webhook_poll_seconds": 0.2}
