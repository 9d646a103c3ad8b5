"""Objects left behind by a crash between bytes and records are swept; nothing else is."""

from __future__ import annotations

import datetime as dt

import grpc

from kiln.v1 import dataset_pb2 as pb
from kiln.v1 import dataset_pb2_grpc
from services.common import object_keys
from tests.dataset.conftest import service_on_own_bucket
from tests.dataset.helpers import image_bytes, new_dataset, upload


def test_sweep_removes_only_unreferenced_objects(aio, s3_settings, tmp_path):
    with service_on_own_bucket(aio, s3_settings, tmp_path, "kiln-orphans") as (service, store, _), \
            grpc.insecure_channel(service.address) as channel:
        stub = dataset_pb2_grpc.DatasetServiceStub(channel)
        dataset = new_dataset(stub)
        kept = upload(stub, dataset.name, image_bytes(seed=1))
        gone = upload(stub, dataset.name, image_bytes(seed=2))
        snapshot = stub.CreateSnapshot(pb.CreateSnapshotRequest(parent=dataset.name))
        stub.DeleteImage(pb.DeleteImageRequest(name=gone.name))  # its original stays: the snapshot reads it
        ghosts = [f"{dataset.name}/images/ghost0001/original", "datasets/deadbeef00/images/x/original",
                  f"{dataset.name}/snapshots/{'0' * 64}.json"]
        for key in ghosts:
            store.put_bytes(key, b"left behind by a crash", "application/octet-stream")
        before = set(store.list_keys("datasets/"))

        # Young objects may belong to an upload still in flight: not judged yet.
        assert aio.run(service.servicer.sweep_orphans(min_age=dt.timedelta(hours=1))) == 0
        assert aio.run(service.servicer.sweep_orphans(min_age=dt.timedelta(0))) == 3
        after = set(store.list_keys("datasets/"))
        assert before - after == set(ghosts)
        assert f"{kept.name}/original" in after and f"{gone.name}/original" in after
        assert object_keys.manifest_key_of(snapshot.name) in after
