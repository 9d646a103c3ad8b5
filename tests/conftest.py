"""Session-wide real servers shared by every test package."""

from __future__ import annotations

import pathlib
import tempfile
from collections.abc import Iterator

import pytest

from services.common.embedded_s3 import EmbeddedS3
from services.common.loop_thread import LoopThread
from services.common.objectstore import ObjectStore
from services.common.settings import ObjectStoreSettings
from tests.servers import PostgresCluster

ACCESS_KEY, SECRET_KEY = "kiln-test", "kiln-test-secret"




@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The base-model store of this run: the tiny models are built here once, never in ~/.cache."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[EmbeddedS3]:
    directory = pathlib.Path(tempfile.mkdtemp(prefix="kiln-s3-"))
    server = EmbeddedS3(directory, ACCESS_KEY, SECRET_KEY).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_settings(s3_server: EmbeddedS3) -> ObjectStoreSettings:
    return ObjectStoreSettings(endpoint=s3_server.endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                               bucket="kiln-test")


@pytest.fixture(scope="session")
def store(s3_settings: ObjectStoreSettings) -> ObjectStore:
    store = ObjectStore(s3_settings)
    store.ensure_bucket()
    return store


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def aio() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.close()
