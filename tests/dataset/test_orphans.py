"""Objects left behind by a crash between bytes and records are swept; nothing else is."""

from __future__ import annotations

import asyncio
import datetime as dt

from kiln.v1 import dataset_pb2 as pb
from kiln.v1 import dataset_pb2_grpc
from services.common import object_keys
from services.common.internal_client import internal_channel
from services.common.objectstore import ObjectStore
from services.dataset.server import running_dataset_service
from tests.dataset.conftest import make_settings, service_on_own_bucket
from tests.dataset.helpers import image_bytes, new_dataset, upload
from tests.servers import TEST_AUTH


def test_sweep_removes_only_unreferenced_objects(aio, s3_settings, tmp_path):
    with service_on_own_bucket(aio, s3_settings, tmp_path, "kiln-orphans") as (service, store, _), \
            internal_channel(service.address, TEST_AUTH) as channel:
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


def test_a_service_starting_up_sweeps_what_an_earlier_crash_left(aio, s3_settings, tmp_path):
    bucket = "kiln-startup-sweep"
    store = ObjectStore(s3_settings.model_copy(update={"bucket": bucket}))
    store.ensure_bucket()
    leftover = "datasets/crashed0001/images/img0001/original"  # its record was never committed
    store.put_bytes(leftover, b"bytes of an upload whose process was killed", "image/png")
    settings = make_settings(tmp_path, s3_settings.model_copy(update={"bucket": bucket}), orphan_min_age_seconds=0)
    with aio.context(running_dataset_service(settings, store)) as service:
        aio.run(asyncio.wait_for(service.components.swept.wait(), 60))
        assert store.list_keys("datasets/") == []
