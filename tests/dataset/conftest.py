from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from kiln.v1 import dataset_pb2_grpc
from services.common.loop_thread import LoopThread
from services.common.objectstore import ObjectStore
from services.common.settings import ObjectStoreSettings, ServerSettings
from services.dataset.server import DatasetService, running_dataset_service
from services.dataset.settings import DatasetSettings


def make_settings(data_dir: pathlib.Path, s3: ObjectStoreSettings, **overrides: Any) -> DatasetSettings:
    return DatasetSettings(data_dir=data_dir, s3=s3, server=ServerSettings(port=0, shutdown_grace=1.0),
                           json_logs=False, **overrides)


@pytest.fixture(scope="module")
def service(aio: LoopThread, store: ObjectStore, s3_settings: ObjectStoreSettings,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatasetService]:
    settings = make_settings(tmp_path_factory.mktemp("dataset"), s3_settings)
    with aio.context(running_dataset_service(settings, store)) as running:
        yield running


@pytest.fixture(scope="module")
def stub(service: DatasetService) -> Iterator[dataset_pb2_grpc.DatasetServiceStub]:
    with grpc.insecure_channel(service.address) as channel:
        yield dataset_pb2_grpc.DatasetServiceStub(channel)
