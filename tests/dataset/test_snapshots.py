"""Snapshots are immutable and content-addressed; later edits never change them."""

from __future__ import annotations

import hashlib

import grpc
from google.protobuf import json_format

from kiln.v1 import dataset_pb2 as pb
from kiln.v1 import snapshot_manifest_pb2 as mpb
from services.common import object_keys
from services.dataset.snapshots import canonical_json
from tests.dataset.helpers import failure, image_bytes, new_dataset, upload


def test_snapshot_survives_every_later_edit(stub, store):
    dataset = new_dataset(stub, default_repeat=4)
    a = upload(stub, dataset.name, image_bytes(700, 500, seed=1), tags=["trig", "smile"], repeat=2)
    b = upload(stub, dataset.name, image_bytes(700, 500, seed=2), tags=["trig"])
    reg = upload(stub, dataset.name, image_bytes(700, 500, seed=3), role=pb.IMAGE_ROLE_REGULARIZATION)
    list(stub.CropImages(pb.CropImagesRequest(parent=dataset.name, names=[a.name], mode=pb.CROP_MODE_CENTER,
                                              target_width=512, target_height=512)))
    snapshot = stub.CreateSnapshot(pb.CreateSnapshotRequest(parent=dataset.name))
    assert (snapshot.training_image_count, snapshot.regularization_image_count) == (2, 1)
    assert snapshot.total_repeated_images == 2 + 4
    manifest_key = object_keys.manifest_key_of(snapshot.name)
    body = store.get_bytes(manifest_key)
    assert hashlib.sha256(body).hexdigest() == snapshot.sha256 and snapshot.name.endswith(snapshot.sha256)
    manifest = json_format.Parse(body, mpb.SnapshotManifest())
    # Stored in its one canonical form: the same state can only ever give these bytes.
    assert canonical_json(manifest) == body
    assert (manifest.dataset, manifest.family, manifest.default_repeat) == (dataset.name, pb.MODEL_FAMILY_SD15, 4)
    entries = {e.id: e for e in manifest.images}
    first = entries[a.name.rsplit("/", 1)[1]]
    assert list(first.tags) == ["trig", "smile"] and first.caption == "trig, smile" and first.repeat == 2
    # b has no repeat of its own: the manifest says so, beside the dataset's default.
    assert not entries[b.name.rsplit("/", 1)[1]].HasField("repeat")
    assert entries[reg.name.rsplit("/", 1)[1]].role == pb.IMAGE_ROLE_REGULARIZATION
    assert first.crop == mpb.ManifestCrop(box=pb.CropBox(left=100, top=0, width=500, height=500), target_width=512,
                                          target_height=512)
    referenced = [e.object_key for e in manifest.images]
    contents = {k: store.get_bytes(k) for k in referenced}

    # Same state, same snapshot.
    assert stub.CreateSnapshot(pb.CreateSnapshotRequest(parent=dataset.name)).name == snapshot.name
    # Now change everything the snapshot describes.
    stub.BatchEditTags(pb.BatchEditTagsRequest(parent=dataset.name,
                                               remove=pb.BatchEditTagsRequest.RemoveTag(tag="trig")))
    list(stub.CropImages(pb.CropImagesRequest(parent=dataset.name, mode=pb.CROP_MODE_CENTER,
                                              target_width=768, target_height=512)))
    stub.UpdateDataset(pb.UpdateDatasetRequest(dataset=pb.Dataset(name=dataset.name, default_repeat=9),
                                               update_mask={"paths": ["default_repeat"]}))
    stub.BatchDeleteImages(pb.BatchDeleteImagesRequest(parent=dataset.name, names=[a.name, b.name, reg.name]))

    assert store.get_bytes(manifest_key) == body
    assert {k: store.get_bytes(k) for k in referenced} == contents
    assert stub.GetSnapshot(pb.GetSnapshotRequest(name=snapshot.name)) == snapshot
    assert [s.name for s in stub.ListSnapshots(pb.ListSnapshotsRequest(parent=dataset.name)).snapshots] == [
        snapshot.name]
    # With the images gone the dataset has nothing to snapshot.
    code, reason, _ = failure(stub.CreateSnapshot, pb.CreateSnapshotRequest(parent=dataset.name))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "EMPTY_DATASET")
    # Deleting the dataset removes everything, snapshots included.
    stub.DeleteDataset(pb.DeleteDatasetRequest(name=dataset.name))
    assert store.list_keys(dataset.name + "/") == []
    code, _, _ = failure(stub.GetSnapshot, pb.GetSnapshotRequest(name=snapshot.name))
    assert code == grpc.StatusCode.NOT_FOUND


def test_snapshot_of_an_unknown_dataset(stub):
    code, _, _ = failure(stub.CreateSnapshot, pb.CreateSnapshotRequest(parent="datasets/nope"))
    assert code == grpc.StatusCode.NOT_FOUND
