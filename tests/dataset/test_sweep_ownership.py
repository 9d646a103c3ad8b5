"""The dataset service's sweeps share the bucket with the trainer service and never delete its objects."""

from __future__ import annotations

import datetime as dt

from kiln.v1 import dataset_pb2_grpc
from services.common import object_keys
from services.common.internal_client import internal_channel
from services.dataset.orphans import orphans
from services.dataset.staging_sweep import abandoned
from tests.dataset.conftest import service_on_own_bucket
from tests.dataset.helpers import image_bytes, new_dataset, upload
from tests.servers import TEST_AUTH

CUTOFF = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)
OLD = CUTOFF - dt.timedelta(days=30)
# The trainer's objects, two of them shaped like dataset keys below its own prefix.
FOREIGN = [f"{object_keys.training_job_prefix('j1')}epochs/1/lora.safetensors",
           f"{object_keys.training_job_prefix('j1')}datasets/d1/images/i1/original",
           f"{object_keys.model_prefix('m1')}uploads/d1/u1"]


def test_the_orphan_sweep_judges_only_keys_under_datasets():
    listing = [(key, OLD) for key in [*FOREIGN, "uploads/d1/u1", "datasets/gone/images/i1/original"]]
    assert orphans(listing, set(), set(), set(), CUTOFF) == ["datasets/gone/images/i1/original"]


def test_the_staging_sweep_judges_only_keys_under_uploads():
    # Nothing outside uploads/ has an upload record, so without the prefix check all of it looks abandoned.
    listing = [(key, OLD) for key in [*FOREIGN, object_keys.original_key("d1", "i1"), "uploads/d1/gone"]]
    assert abandoned(listing, set(), CUTOFF) == ["uploads/d1/gone"]


def test_old_unreferenced_trainer_objects_outlive_every_sweep(aio, s3_settings, tmp_path):
    with service_on_own_bucket(aio, s3_settings, tmp_path, "kiln-shared-bucket") as (service, store, _), \
            internal_channel(service.address, TEST_AUTH) as channel:
        stub = dataset_pb2_grpc.DatasetServiceStub(channel)
        dataset = new_dataset(stub)
        upload(stub, dataset.name, image_bytes(seed=41))
        dataset_id = dataset.name.removeprefix("datasets/")
        planted = [object_keys.original_key(dataset_id, "ghost0001"), object_keys.staging_key(dataset_id, "gone")]
        for key in FOREIGN + planted:
            store.put_bytes(key, b"no record names this", "application/octet-stream")

        # Every object is older than the cut-off now, so every sweep judges everything it lists.
        zero = dt.timedelta(0)
        swept = (aio.run(service.servicer.sweep_orphans(min_age=zero)),
                 aio.run(service.servicer.sweep_abandoned_staging(min_age=zero)),
                 aio.run(service.servicer.sweep_expired_uploads()))
        assert swept == (1, 1, 0)  # the dataset service's own leftovers went
        remaining = set(store.list_keys(""))
        assert set(FOREIGN) <= remaining and not set(planted) & remaining
