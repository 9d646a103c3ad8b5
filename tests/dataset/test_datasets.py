"""Dataset resources: create, get, list, update with a field mask, delete, tenants."""

from __future__ import annotations

import grpc
import pytest

from kiln.v1 import dataset_pb2 as pb
from services.common.internal_auth import TENANT_HEADER
from services.common.settings import ObjectStoreSettings
from services.dataset.settings import DatasetSettings
from tests.dataset.conftest import make_settings
from tests.dataset.helpers import failure, image_bytes, new_dataset, upload

# Limits of this module's service, unlike the defaults, so that a Dataset is seen to state them.
TRAINING_LIMIT, REGULARIZATION_LIMIT = 7, 3


@pytest.fixture(scope="module")
def dataset_settings(s3_settings: ObjectStoreSettings, tmp_path_factory: pytest.TempPathFactory) -> DatasetSettings:
    return make_settings(tmp_path_factory.mktemp("dataset"), s3_settings, max_training_images=TRAINING_LIMIT,
                         max_regularization_images=REGULARIZATION_LIMIT)


def test_create_get_update_delete(stub, store):
    created = stub.CreateDataset(pb.CreateDatasetRequest(dataset=pb.Dataset(
        display_name=" My character ", family=pb.MODEL_FAMILY_SDXL, default_repeat=8, description="d")))
    assert created.name.startswith("datasets/") and created.display_name == "My character"
    assert (created.family, created.default_repeat, created.training_image_count) == (pb.MODEL_FAMILY_SDXL, 8, 0)
    assert stub.GetDataset(pb.GetDatasetRequest(name=created.name)) == created
    # Every Dataset states how many images each set may hold, as the service is configured.
    assert (created.max_training_images, created.max_regularization_images) == (TRAINING_LIMIT, REGULARIZATION_LIMIT)
    updated = stub.UpdateDataset(pb.UpdateDatasetRequest(
        dataset=pb.Dataset(name=created.name, display_name="Renamed", default_repeat=99, family=pb.MODEL_FAMILY_SD15),
        update_mask={"paths": ["display_name"]}))
    assert (updated.display_name, updated.default_repeat, updated.family) == ("Renamed", 8, pb.MODEL_FAMILY_SDXL)
    assert updated.update_time.ToDatetime() >= created.update_time.ToDatetime()
    code, _, fields = failure(stub.UpdateDataset, pb.UpdateDatasetRequest(
        dataset=pb.Dataset(name=created.name, family=pb.MODEL_FAMILY_SD15), update_mask={"paths": ["family"]}))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["update_mask"])
    code, _, fields = failure(stub.UpdateDataset, pb.UpdateDatasetRequest(dataset=pb.Dataset(name=created.name)))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["update_mask"])
    upload(stub, created.name, image_bytes())
    stub.DeleteDataset(pb.DeleteDatasetRequest(name=created.name))
    code, _, _ = failure(stub.GetDataset, pb.GetDatasetRequest(name=created.name))
    assert code == grpc.StatusCode.NOT_FOUND
    assert store.list_keys(created.name + "/") == []


def test_list_pages(stub):
    made = [new_dataset(stub, name=f"page {i}", default_repeat=3).name for i in range(5)]
    upload(stub, made[1], image_bytes(seed=40), repeat=5)
    upload(stub, made[1], image_bytes(seed=41))
    upload(stub, made[3], image_bytes(seed=42), role=pb.IMAGE_ROLE_REGULARIZATION)
    seen, token = [], ""
    while True:
        page = stub.ListDatasets(pb.ListDatasetsRequest(page_size=2, page_token=token))
        assert len(page.datasets) <= 2
        seen += [d.name for d in page.datasets]
        token = page.next_page_token
        if not token:
            break
    assert seen[-5:] == made and len(seen) == len(set(seen))
    # Counts come with every listed dataset.
    listed = {d.name: d for d in stub.ListDatasets(pb.ListDatasetsRequest(page_size=100)).datasets}
    counts = [(listed[n].training_image_count, listed[n].regularization_image_count, listed[n].total_repeated_images)
              for n in made]
    assert counts == [(0, 0, 0), (2, 0, 8), (0, 0, 0), (0, 1, 0), (0, 0, 0)]
    assert {(d.max_training_images, d.max_regularization_images) for d in listed.values()} == {
        (TRAINING_LIMIT, REGULARIZATION_LIMIT)}


def test_tenants_are_isolated(stub):
    mine = stub.CreateDataset(pb.CreateDatasetRequest(dataset=pb.Dataset(
        display_name="tenant a", family=pb.MODEL_FAMILY_SD15)), metadata=[(TENANT_HEADER, "tenant-a")])
    code, _, _ = failure(stub.GetDataset, pb.GetDatasetRequest(name=mine.name),
                         metadata=[(TENANT_HEADER, "tenant-b")])
    assert code == grpc.StatusCode.NOT_FOUND
    listed = stub.ListDatasets(pb.ListDatasetsRequest(page_size=100), metadata=[(TENANT_HEADER, "tenant-b")])
    assert mine.name not in [d.name for d in listed.datasets]
    code, _, fields = failure(stub.GetDataset, pb.GetDatasetRequest(name=mine.name),
                              metadata=[(TENANT_HEADER, "Bad Tenant!")])
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, [TENANT_HEADER])
