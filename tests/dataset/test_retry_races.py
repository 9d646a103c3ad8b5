"""Retries of one request, at once or later, get the first answer and do no work twice.

The PostgreSQL races are made deterministic by holding the dataset row from the test's own
connection until every request waits behind it, then letting them go together."""

from __future__ import annotations

import concurrent.futures
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from kiln.v1 import dataset_pb2 as pb
from kiln.v1 import dataset_pb2_grpc
from services.common import object_keys
from services.common.internal_client import internal_channel
from services.common.objectstore import ObjectStore
from services.dataset import names
from services.dataset.server import running_dataset_service
from tests.dataset.concurrency import outcome, pg_dataset_locked, wait_for_lock_waiters
from tests.dataset.conftest import make_settings
from tests.dataset.helpers import failure, image_bytes, new_dataset, upload
from tests.dataset.upload_form import sent
from tests.servers import TEST_AUTH


@dataclass
class PgService:
    stub: dataset_pb2_grpc.DatasetServiceStub
    url: str

    def all_at_once(self, dataset: pb.Dataset, calls: list[Callable[[], Any]]) -> list[str]:
        """Start every call while the dataset is held, release it once all of them wait, and
        return their outcomes."""
        with pg_dataset_locked(self.url, names.parse_dataset(dataset.name)) as release, \
                concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
            futures = [pool.submit(outcome, call) for call in calls]
            wait_for_lock_waiters(self.url, len(calls))
            release()
            return [f.result() for f in futures]


@pytest.fixture(scope="module")
def pg(aio, store, s3_settings, postgres, tmp_path_factory) -> Iterator[PgService]:
    url = postgres.create_database(f"retries_{uuid.uuid4().hex[:8]}")
    settings = make_settings(tmp_path_factory.mktemp("pg-retries"), s3_settings, dataset_database_url=url)
    with aio.context(running_dataset_service(settings, store)) as running, \
            internal_channel(running.address, TEST_AUTH) as channel:
        yield PgService(dataset_pb2_grpc.DatasetServiceStub(channel), url)


def put_to_upload(stub: dataset_pb2_grpc.DatasetServiceStub, dataset: pb.Dataset, data: bytes) -> pb.ImageUpload:
    ticket = stub.CreateImageUpload(pb.CreateImageUploadRequest(
        parent=dataset.name, role=pb.IMAGE_ROLE_TRAINING, filename="browser.png", size_bytes=len(data)))
    sent(ticket, data)
    return ticket


@pytest.mark.postgres
def test_parallel_retries_of_an_upload_get_the_first_answer(pg: PgService, store: ObjectStore) -> None:
    dataset = new_dataset(pg.stub)
    data = image_bytes(seed=7100)
    request_id = f"upload-{uuid.uuid4().hex}"
    outcomes = pg.all_at_once(dataset, [lambda: upload(pg.stub, dataset.name, data, request_id=request_id)] * 4)
    assert len(set(outcomes)) == 1 and outcomes[0].startswith(dataset.name), outcomes
    assert pg.stub.ListImages(pb.ListImagesRequest(parent=dataset.name)).total_size == 1
    assert store.list_keys(dataset.name + "/") == [outcomes[0] + "/original"]


@pytest.mark.postgres
def test_parallel_retries_of_a_delete_get_the_first_answer(pg: PgService) -> None:
    dataset = new_dataset(pg.stub)
    image = upload(pg.stub, dataset.name, image_bytes(seed=7101))
    request = pb.DeleteImageRequest(name=image.name, request_id=f"delete-{uuid.uuid4().hex}")
    outcomes = pg.all_at_once(dataset, [lambda: pg.stub.DeleteImage(request)] * 4)
    assert outcomes == ["ok"] * 4
    assert pg.stub.ListImages(pb.ListImagesRequest(parent=dataset.name)).total_size == 0


@pytest.mark.postgres
def test_parallel_finalizes_of_one_upload_make_one_image(pg: PgService, store: ObjectStore) -> None:
    dataset = new_dataset(pg.stub)
    ticket = put_to_upload(pg.stub, dataset, image_bytes(seed=7102))
    request = pb.FinalizeImageUploadRequest(name=ticket.name)
    outcomes = pg.all_at_once(dataset, [lambda: pg.stub.FinalizeImageUpload(request)] * 3)
    assert len(set(outcomes)) == 1 and outcomes[0].startswith(dataset.name), outcomes
    assert pg.stub.ListImages(pb.ListImagesRequest(parent=dataset.name)).total_size == 1
    assert store.list_keys(dataset.name + "/") == [outcomes[0] + "/original"]


@pytest.mark.postgres
def test_finalize_checks_its_request_id(pg: PgService) -> None:
    dataset = new_dataset(pg.stub)
    ticket = put_to_upload(pg.stub, dataset, image_bytes(seed=7103))
    code, _, fields = failure(pg.stub.FinalizeImageUpload,
                              pb.FinalizeImageUploadRequest(name=ticket.name, request_id="r" * 200))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["request_id"])


def test_finalize_retry_replays_after_the_image_is_gone(stub) -> None:
    dataset = new_dataset(stub)
    ticket = put_to_upload(stub, dataset, image_bytes(seed=7104))
    request = pb.FinalizeImageUploadRequest(name=ticket.name, request_id=f"fin-{uuid.uuid4().hex}")
    first = stub.FinalizeImageUpload(request)
    stub.DeleteImage(pb.DeleteImageRequest(name=first.name))
    assert stub.FinalizeImageUpload(request) == first
    # Without the request id, the upload is spent.
    code, reason, _ = failure(stub.FinalizeImageUpload, pb.FinalizeImageUploadRequest(name=ticket.name))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "UPLOAD_CONSUMED")
    # The same id for another upload is another request.
    other = put_to_upload(stub, dataset, image_bytes(seed=7105))
    code, reason, _ = failure(stub.FinalizeImageUpload, pb.FinalizeImageUploadRequest(
        name=other.name, request_id=request.request_id))
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")


class GrowsBeforeRead:
    """The object store as it looks when a client sends a bigger file to the upload form again,
    after any look at the size and before the service reads the bytes."""

    def __init__(self, store: ObjectStore, bigger: bytes) -> None:
        self._store = store
        self._bigger = bigger
        self.grown = False
        self.bytes_read = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def _grow(self, key: str) -> None:
        if not self.grown and key.startswith("uploads/"):
            self.grown = True
            self._store.put_bytes(key, self._bigger)

    def size(self, key: str) -> int:
        size = self._store.size(key)
        self._grow(key)
        return size

    def get_bytes(self, key: str) -> bytes:
        self._grow(key)
        data = self._store.get_bytes(key)
        self.bytes_read += len(data)
        return data

    def iter_chunks(self, key: str, chunk_size: int) -> Iterator[bytes]:
        self._grow(key)
        for chunk in self._store.iter_chunks(key, chunk_size):
            self.bytes_read += len(chunk)
            yield chunk


def test_finalize_reads_no_more_than_was_declared(aio, s3_settings, tmp_path, store: ObjectStore) -> None:
    data = image_bytes(seed=7106)
    grown = data + bytes(8 * 1024 * 1024)
    racing = GrowsBeforeRead(store, grown)
    with aio.context(running_dataset_service(make_settings(tmp_path, s3_settings), racing)) as racing_service, \
            internal_channel(racing_service.address, TEST_AUTH) as channel:
        stub = dataset_pb2_grpc.DatasetServiceStub(channel)
        dataset = new_dataset(stub)
        ticket = put_to_upload(stub, dataset, data)
        code, reason, _ = failure(stub.FinalizeImageUpload, pb.FinalizeImageUploadRequest(name=ticket.name))
        assert racing.grown, "the upload was never looked at"
        assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "SIZE_MISMATCH")
        assert racing.bytes_read < len(grown) // 2
        assert stub.ListImages(pb.ListImagesRequest(parent=dataset.name)).total_size == 0
    assert store.list_keys(dataset.name + "/") == []


def test_snapshot_retry_replays_without_building_again(stub, store: ObjectStore) -> None:
    dataset = new_dataset(stub)
    upload(stub, dataset.name, image_bytes(seed=7107))
    request = pb.CreateSnapshotRequest(parent=dataset.name, request_id=f"snap-{uuid.uuid4().hex}")
    first = stub.CreateSnapshot(request)
    manifests = store.list_keys(dataset.name + "/snapshots/")
    assert manifests == [object_keys.manifest_key_of(first.name)]
    # The dataset changes; a retry still gets the first answer and writes no second manifest.
    upload(stub, dataset.name, image_bytes(seed=7108))
    assert stub.CreateSnapshot(request) == first
    assert store.list_keys(dataset.name + "/snapshots/") == manifests
    # Emptied, the dataset could not be snapshotted any more; the retry answers all the same.
    everything = [i.name for i in stub.ListImages(pb.ListImagesRequest(parent=dataset.name)).images]
    stub.BatchDeleteImages(pb.BatchDeleteImagesRequest(parent=dataset.name, names=everything))
    assert stub.CreateSnapshot(request) == first
    code, reason, _ = failure(stub.CreateSnapshot, pb.CreateSnapshotRequest(parent=dataset.name))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "EMPTY_DATASET")


def test_crop_update_retry_replays_after_the_image_is_gone(stub) -> None:
    dataset = new_dataset(stub)
    image = upload(stub, dataset.name, image_bytes(700, 500, seed=7109))
    request = pb.UpdateImageRequest(
        image=pb.Image(name=image.name, crop=pb.Crop(box=pb.CropBox(left=10, top=0, width=500, height=500),
                                                     target_width=512, target_height=512)),
        update_mask={"paths": ["crop"]}, request_id=f"crop-{uuid.uuid4().hex}")
    first = stub.UpdateImage(request)
    stub.DeleteImage(pb.DeleteImageRequest(name=image.name))
    assert stub.UpdateImage(request) == first


def crop_events(stub, request: pb.CropImagesRequest) -> list[pb.CropImagesResponse]:
    return list(stub.CropImages(request))


def test_crop_batch_retry_replays_and_another_body_is_refused(stub) -> None:
    dataset = new_dataset(stub)
    image = upload(stub, dataset.name, image_bytes(700, 500, seed=7110))
    request = pb.CropImagesRequest(parent=dataset.name, mode=pb.CROP_MODE_CENTER, target_width=512,
                                   target_height=512, request_id=f"crops-{uuid.uuid4().hex}")
    events = crop_events(stub, request)
    assert events[-1].done == events[-1].total == 1
    # A crop set by hand afterwards is what a replay must leave alone.
    manual = stub.UpdateImage(pb.UpdateImageRequest(
        image=pb.Image(name=image.name, crop=pb.Crop(box=pb.CropBox(left=0, top=0, width=500, height=500),
                                                     target_width=512, target_height=512)),
        update_mask={"paths": ["crop"]}))
    assert crop_events(stub, request) == [events[-1]]
    assert stub.GetImage(pb.GetImageRequest(name=image.name)).crop == manual.crop
    other = pb.CropImagesRequest(parent=dataset.name, mode=pb.CROP_MODE_FOCUS, target_width=768, target_height=512,
                                 request_id=request.request_id)
    code, reason, fields = failure(crop_events, stub, other)
    assert (code, reason, fields) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED", ["request_id"])
    assert stub.GetImage(pb.GetImageRequest(name=image.name)).crop == manual.crop
