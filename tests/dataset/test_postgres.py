"""The same service on PostgreSQL: the scenario, and limits and retries under concurrency."""

from __future__ import annotations

import concurrent.futures
import uuid
from collections.abc import Iterator

import grpc
import pytest
import sqlalchemy as sa

from kiln.v1 import dataset_pb2 as pb
from kiln.v1 import dataset_pb2_grpc
from services.common.database import create_engine
from services.common.internal_client import internal_channel
from services.common.settings import ServerSettings
from services.dataset.schema import datasets
from services.dataset.server import DatasetService, running_dataset_service
from tests.dataset.conftest import make_settings
from tests.dataset.helpers import image_bytes, new_dataset, upload
from tests.servers import TEST_AUTH

pytestmark = pytest.mark.postgres
LIMIT = 5


@pytest.fixture(scope="module")
def pg_url(postgres) -> str:
    return postgres.create_database(f"dataset_{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def pg_service(aio, store, s3_settings, pg_url, tmp_path_factory) -> Iterator[DatasetService]:
    settings = make_settings(tmp_path_factory.mktemp("pg-dataset"), s3_settings, dataset_database_url=pg_url,
                             max_training_images=LIMIT)
    with aio.context(running_dataset_service(settings, store)) as running:
        yield running


@pytest.fixture(scope="module")
def pg_stub(pg_service) -> Iterator[dataset_pb2_grpc.DatasetServiceStub]:
    with internal_channel(pg_service.address, TEST_AUTH) as channel:
        yield dataset_pb2_grpc.DatasetServiceStub(channel)


def test_scenario_on_postgres(pg_stub, pg_url):
    dataset = new_dataset(pg_stub, default_repeat=3)
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:  # the service keeps its records in this database
            stored = conn.execute(sa.select(datasets.c.id).where(datasets.c.id == dataset.name.split("/")[1]))
            assert stored.scalar_one_or_none() is not None
    finally:
        engine.dispose()
    names = [upload(pg_stub, dataset.name, image_bytes(600, 400, seed=i), tags=["x", f"t{i}"]).name
             for i in range(3)]
    events = list(pg_stub.CropImages(pb.CropImagesRequest(parent=dataset.name, mode=pb.CROP_MODE_FOCUS,
                                                          target_width=768, target_height=512)))
    assert events[-1].done == 3
    pg_stub.BatchEditTags(pb.BatchEditTagsRequest(
        parent=dataset.name, add=pb.BatchEditTagsRequest.AddTag(tag="trig", position=pb.TAG_POSITION_HEAD)))
    page = pg_stub.ListImages(pb.ListImagesRequest(parent=dataset.name, page_size=2))
    rest = pg_stub.ListImages(pb.ListImagesRequest(parent=dataset.name, page_size=2, page_token=page.next_page_token))
    assert [i.name for i in [*page.images, *rest.images]] == names
    assert all(i.tags[0] == "trig" for i in [*page.images, *rest.images])
    snapshot = pg_stub.CreateSnapshot(pb.CreateSnapshotRequest(parent=dataset.name))
    assert snapshot.total_repeated_images == 9
    pg_stub.DeleteDataset(pb.DeleteDatasetRequest(name=dataset.name))


def attempt_upload(stub, parent: str, data: bytes) -> str:
    try:
        upload(stub, parent, data)
        return "ok"
    except grpc.RpcError as err:
        return err.code().name


def test_concurrent_uploads_respect_the_limit(pg_stub, store):
    dataset = new_dataset(pg_stub)
    images = [image_bytes(64, 64, seed=500 + i) for i in range(3 * LIMIT)]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda data: attempt_upload(pg_stub, dataset.name, data), images))
    assert outcomes.count("ok") == LIMIT
    assert outcomes.count("RESOURCE_EXHAUSTED") == 2 * LIMIT
    assert pg_stub.ListImages(pb.ListImagesRequest(parent=dataset.name)).total_size == LIMIT
    assert len(store.list_keys(dataset.name + "/images/")) == LIMIT


def test_concurrent_retries_create_one_dataset(pg_stub):
    request = pb.CreateDatasetRequest(dataset=pb.Dataset(display_name="racy", family=pb.MODEL_FAMILY_SD15),
                                      request_id=f"race-{uuid.uuid4().hex}")
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: pg_stub.CreateDataset(request), range(6)))
    assert len({r.name for r in results}) == 1


def test_duplicate_bytes_race(pg_stub):
    dataset = new_dataset(pg_stub)
    data = image_bytes(seed=77)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(lambda _: attempt_upload(pg_stub, dataset.name, data), range(4)))
    assert outcomes.count("ok") == 1 and outcomes.count("ALREADY_EXISTS") == 3



def test_background_tagging_on_postgres(aio, store, s3_settings, postgres, tmp_path_factory):
    from services.common.bundled_data import samples_dir
    from services.tagger.server import running_tagger_service
    from services.tagger.settings import TaggerSettings

    tagger_settings = TaggerSettings(data_dir=tmp_path_factory.mktemp("pg-tagger"), s3=s3_settings,
                                     server=ServerSettings(port=0, shutdown_grace=1.0), json_logs=False,
                                     internal_auth=TEST_AUTH)
    url = postgres.create_database(f"tagging_{uuid.uuid4().hex[:8]}")
    with aio.context(running_tagger_service(tagger_settings, store)) as tagger:
        settings = make_settings(tmp_path_factory.mktemp("pg-tagged"), s3_settings, dataset_database_url=url,
                                 tagger_address=tagger.address, tagging_batch_size=2)
        with aio.context(running_dataset_service(settings, store)) as service, \
                internal_channel(service.address, TEST_AUTH) as channel:
            stub = dataset_pb2_grpc.DatasetServiceStub(channel)
            dataset = new_dataset(stub)
            names = [upload(stub, dataset.name, (samples_dir() / f).read_bytes(), filename=f).name
                     for f in ("astronaut.png", "camera.png", "chelsea.png")]
            aio.run(service.servicer.tagging.until_idle())
            images = [stub.GetImage(pb.GetImageRequest(name=n)) for n in names]
            assert all(i.auto_tagging.state == pb.TAGGING_STATE_DONE and i.tags for i in images)
            assert stub.CreateSnapshot(pb.CreateSnapshotRequest(parent=dataset.name)).training_image_count == 3
