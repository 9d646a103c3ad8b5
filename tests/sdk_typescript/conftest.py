"""The gateway in front of real dataset and trainer services, as tests/gateway runs it, and a worker that trains."""

from tests.gateway.conftest import (  # noqa: F401  (fixtures, found by name)
    dataset_service,
    gateway,
    gateway_dir,
    gateway_overrides,
    trainer,
    trainer_database,
    trainer_overrides,
)
from tests.training_service.conftest import worker  # noqa: F401
