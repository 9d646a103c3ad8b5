"""The engine against a real S3 server: snapshot and images read by key, outputs written by key."""

from __future__ import annotations

import uuid

from google.protobuf import json_format

from kiln.v1 import dataset_pb2 as pb
from kiln.v1 import snapshot_manifest_pb2 as mpb
from services.trainer.engine.object_store_io import ObjectStoreReader, ObjectStoreWriter
from services.trainer.engine.snapshot import load_snapshot
from services.trainer.engine.trainer import train


def test_train_from_and_into_the_object_store(store, make_dataset, fast_config, model_store) -> None:
    dataset = make_dataset(count=2)
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    manifest = mpb.SnapshotManifest(dataset="datasets/test", family=pb.MODEL_FAMILY_SD15, default_repeat=1)
    for image in dataset.snapshot.images:
        key = f"{prefix}/{image.object_key}"
        store.put_bytes(key, dataset.reader.read(image.object_key), "image/png")
        manifest.images.add(id=image.id, role=pb.IMAGE_ROLE_TRAINING, object_key=key, width=image.width,
                            height=image.height, tags=image.tags, caption=image.caption)
    store.put_bytes(f"{prefix}/snapshot.json", json_format.MessageToJson(manifest).encode(), "application/json")

    reader = ObjectStoreReader(store)
    snapshot = load_snapshot(reader, f"{prefix}/snapshot.json")
    writer = ObjectStoreWriter(store, f"{prefix}/trainingJobs/j1")
    result = train(fast_config(epochs=2, preview={"count": 1}), snapshot, reader, writer, store=model_store)
    assert result.saved_epochs == [1, 2]
    keys = set(store.list_keys(f"{prefix}/trainingJobs/j1/"))
    for epoch in (1, 2):
        assert f"{prefix}/trainingJobs/j1/epochs/{epoch}/lora.safetensors" in keys
        assert f"{prefix}/trainingJobs/j1/epochs/{epoch}/previews/0.png" in keys
        assert f"{prefix}/trainingJobs/j1/epochs/{epoch}/checkpoint.pt" in keys
    # A worker that picks the job up again finds the checkpoint there and has nothing left to do.
    again = train(fast_config(epochs=2, preview={"count": 1}), snapshot, reader, writer, store=model_store)
    assert again.resumed_from_epoch == 2 and again.step_losses == []
