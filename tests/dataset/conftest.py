from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

from kiln.v1 import dataset_pb2_grpc
from services.common.internal_client import internal_channel
from services.common.loop_thread import LoopThread
from services.common.objectstore import ObjectStore
from services.common.settings import ObjectStoreSettings, ServerSettings
from services.dataset.server import DatasetService, running_dataset_service
from services.dataset.settings import DatasetSettings
from tests.servers import TEST_AUTH


def make_settings(data_dir: pathlib.Path, s3: ObjectStoreSettings, **overrides: Any) -> DatasetSettings:
    # Most test services share one bucket, and each one's orphan sweep would take the others'
    # objects for leftovers: the sweeps judge nothing a test session could have written.
    values: dict[str, Any] = {"server": ServerSettings(port=0, shutdown_grace=1.0), "json_logs": False,
                              "internal_auth": TEST_AUTH, "orphan_min_age_seconds": 30 * 24 * 3600, **overrides}
    return DatasetSettings(data_dir=data_dir, s3=s3, **values)


@contextlib.contextmanager
def service_on_own_bucket(aio: LoopThread, s3_settings: ObjectStoreSettings, data_dir: pathlib.Path,
                          bucket: str) -> Iterator[tuple[DatasetService, ObjectStore, DatasetSettings]]:
    """A dataset service alone in its bucket: for sweeps, which judge every object they list."""
    settings = make_settings(data_dir, s3_settings.model_copy(update={"bucket": bucket}))
    store = ObjectStore(settings.s3)
    store.ensure_bucket()
    with aio.context(running_dataset_service(settings, store)) as running:
        yield running, store, settings


@pytest.fixture(scope="module")
def dataset_settings(s3_settings: ObjectStoreSettings, tmp_path_factory: pytest.TempPathFactory) -> DatasetSettings:
    """What the module's `service` runs with."""
    return make_settings(tmp_path_factory.mktemp("dataset"), s3_settings)


@pytest.fixture(scope="module")
def service(aio: LoopThread, store: ObjectStore, dataset_settings: DatasetSettings) -> Iterator[DatasetService]:
    with aio.context(running_dataset_service(dataset_settings, store)) as running:
        yield running


@pytest.fixture(scope="module")
def stub(service: DatasetService) -> Iterator[dataset_pb2_grpc.DatasetServiceStub]:
    with internal_channel(service.address, TEST_AUTH) as channel:
        yield dataset_pb2_grpc.DatasetServiceStub(channel)
