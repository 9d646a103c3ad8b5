"""Staging objects sent with an upload form after their upload record is gone are swept."""

from __future__ import annotations

import datetime as dt

from kiln.v1 import dataset_pb2 as pb
from kiln.v1 import dataset_pb2_grpc
from services.common import object_keys
from services.common.internal_client import internal_channel
from services.dataset import names
from services.dataset.staging_sweep import abandoned
from tests.dataset.conftest import service_on_own_bucket
from tests.dataset.helpers import image_bytes, new_dataset
from tests.dataset.upload_form import sent
from tests.servers import TEST_AUTH


def staging_key(upload: pb.ImageUpload) -> str:
    return object_keys.staging_key(*names.parse_upload(upload.name))


def create_upload(stub: dataset_pb2_grpc.DatasetServiceStub, dataset: pb.Dataset, data: bytes) -> pb.ImageUpload:
    return stub.CreateImageUpload(pb.CreateImageUploadRequest(parent=dataset.name, role=pb.IMAGE_ROLE_TRAINING,
                                                              filename="photo.png", size_bytes=len(data)))


def test_staging_objects_without_a_record_are_swept(aio, s3_settings, tmp_path):
    with service_on_own_bucket(aio, s3_settings, tmp_path, "kiln-staging-sweep") as (service, store, _), \
            internal_channel(service.address, TEST_AUTH) as channel:
        stub = dataset_pb2_grpc.DatasetServiceStub(channel)
        doomed, kept = new_dataset(stub), new_dataset(stub)
        leaked_bytes, live_bytes = image_bytes(seed=31), image_bytes(seed=32)
        leaked = create_upload(stub, doomed, leaked_bytes)
        stub.DeleteDataset(pb.DeleteDatasetRequest(name=doomed.name))
        sent(leaked, leaked_bytes)  # the form outlives the dataset and its upload record
        live = create_upload(stub, kept, live_bytes)
        sent(live, live_bytes)
        assert set(store.list_keys("uploads/")) == {staging_key(leaked), staging_key(live)}

        # Until its form expires a client may send the object again: a young one is not judged yet.
        aio.run(service.components.sweep_once())
        assert set(store.list_keys("uploads/")) == {staging_key(leaked), staging_key(live)}

        assert aio.run(service.servicer.sweep_abandoned_staging(min_age=dt.timedelta(0))) == 1
        assert store.list_keys("uploads/") == [staging_key(live)]
        image = stub.FinalizeImageUpload(pb.FinalizeImageUploadRequest(name=live.name))
        assert image.size_bytes == len(live_bytes)


def test_only_old_objects_without_a_record_are_abandoned():
    cutoff = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)
    old, young = cutoff - dt.timedelta(seconds=1), cutoff + dt.timedelta(seconds=1)
    listing = [("uploads/d/recorded", old), ("uploads/d/gone", old), ("uploads/d/fresh", young),
               ("uploads/d/at-cutoff", cutoff)]
    assert abandoned(listing, {"uploads/d/recorded"}, cutoff) == ["uploads/d/gone", "uploads/d/at-cutoff"]
