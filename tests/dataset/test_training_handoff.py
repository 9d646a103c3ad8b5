"""A snapshot made by the dataset service is what the training engine trains on."""

from __future__ import annotations

import io

import numpy as np
import safetensors.torch
from PIL import Image

from kiln.v1 import dataset_pb2 as pb
from services.common import object_keys
from services.trainer.engine.config import parse_config
from services.trainer.engine.estimate import estimate_training
from services.trainer.engine.images import load_source
from services.trainer.engine.model_store import ModelStore
from services.trainer.engine.object_store_io import ObjectStoreReader, ObjectStoreWriter
from services.trainer.engine.snapshot import load_snapshot
from services.trainer.engine.trainer import train
from tests.dataset.helpers import image_bytes, new_dataset, upload


def test_engine_trains_on_a_dataset_snapshot(stub, store, models_dir):
    dataset = new_dataset(stub, default_repeat=1)
    wide = upload(stub, dataset.name, image_bytes(192, 96, seed=1), tags=["mytrigger", "wide"])
    upload(stub, dataset.name, image_bytes(96, 96, seed=2), tags=["mytrigger", "square"])
    stub.UpdateImage(pb.UpdateImageRequest(
        image=pb.Image(name=wide.name, crop=pb.Crop(box=pb.CropBox(left=96, top=0, width=96, height=96),
                                                    target_width=512, target_height=512)),
        update_mask={"paths": ["crop"]}))
    snapshot_ref = stub.CreateSnapshot(pb.CreateSnapshotRequest(parent=dataset.name))

    reader = ObjectStoreReader(store)
    snapshot = load_snapshot(reader, object_keys.manifest_key_of(snapshot_ref.name))
    assert snapshot.family == "sd15" and len(snapshot.training_images) == 2
    cropped = next(i for i in snapshot.images if i.crop is not None)
    # The engine crops the original itself: the right half of the wide image, at the target size.
    picture = load_source(reader, cropped)
    original = Image.open(io.BytesIO(reader.read(cropped.object_key))).convert("RGB")
    expected = original.crop((96, 0, 192, 96)).resize((512, 512), Image.Resampling.LANCZOS)
    assert picture.size == (512, 512)
    assert np.abs(np.asarray(picture, np.int16) - np.asarray(expected, np.int16)).max() <= 1

    config = parse_config({"epochs": 1, "batch_size": 1, "seed": 3, "network_dim": 4, "network_alpha": 4,
                           "resolution": 128, "min_bucket_reso": 64, "preview": {"count": 0}})
    prefix = object_keys.training_job_prefix(f"handoff-{snapshot_ref.sha256[:8]}").rstrip("/")
    result = train(config, snapshot, reader, ObjectStoreWriter(store, prefix), store=ModelStore(models_dir))
    assert result.saved_epochs == [1] and len(result.step_losses) == 2
    lora = safetensors.torch.load(store.get_bytes(f"{prefix}/epochs/1/lora.safetensors"))
    assert any(key.startswith("lora_unet_") for key in lora)


def test_repeats_of_a_service_snapshot_follow_image_then_job_then_dataset(stub, store, models_dir):
    dataset = new_dataset(stub, default_repeat=4)
    upload(stub, dataset.name, image_bytes(96, 96, seed=1), tags=["own"], repeat=2)
    upload(stub, dataset.name, image_bytes(96, 96, seed=2), tags=["default"])
    snapshot_ref = stub.CreateSnapshot(pb.CreateSnapshotRequest(parent=dataset.name))
    assert snapshot_ref.total_repeated_images == 2 + 4
    snapshot = load_snapshot(ObjectStoreReader(store), object_keys.manifest_key_of(snapshot_ref.name))

    def samples(**overrides: object) -> int:
        config = parse_config({"epochs": 1, "batch_size": 1, "resolution": 64, "min_bucket_reso": 64,
                               "preview": {"count": 0}, **overrides})
        return estimate_training(config, snapshot, ModelStore(models_dir), probe_hardware=False).samples_per_epoch

    assert samples() == 2 + 4  # the dataset's default for the image without its own
    assert samples(repeat=10) == 2 + 10  # a job's repeat (a preset's, say) beats the dataset default only
