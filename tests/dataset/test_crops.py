"""Batch crop (focus and centre), manual crops, upscaling, and the crop maths."""

from __future__ import annotations

import hashlib
import io

import grpc
import numpy as np
import pytest
from PIL import Image

from kiln.v1 import dataset_pb2 as pb
from services.common.body_detector import BodyDetector
from services.common.bundled_data import samples_dir
from services.dataset.cropping import best_window, center_box, max_window, spectral_residual_saliency
from tests.dataset.helpers import failure, image_bytes, new_dataset, upload
from tests.dataset.test_uploads import read_back


def crop_all(stub, parent, mode, width, height, names=()):
    return list(stub.CropImages(pb.CropImagesRequest(parent=parent, mode=mode, target_width=width,
                                                      target_height=height, names=list(names))))


def test_focus_crop_keeps_the_face(stub):
    dataset = new_dataset(stub)
    photo = (samples_dir() / "astronaut.png").read_bytes()
    image = upload(stub, dataset.name, photo, filename="astronaut.png")
    events = crop_all(stub, dataset.name, pb.CROP_MODE_FOCUS, 512, 768)
    crop = events[0].image.crop
    assert (crop.target_width, crop.target_height, crop.mode) == (512, 768, pb.CROP_MODE_FOCUS)
    face = next(d for d in BodyDetector().detect(np.asarray(Image.open(io.BytesIO(photo)).convert("RGB")))
                if d.label == "FACE_FEMALE")
    left, _, width, _ = face.box
    assert crop.box.left <= left and left + width <= crop.box.left + crop.box.width
    meta, cropped = read_back(stub, image.name, pb.IMAGE_VARIANT_CROPPED)
    assert Image.open(io.BytesIO(cropped)).size == (512, 768) == (meta.width, meta.height)
    # The original is untouched: still what the upload stored.
    assert hashlib.sha256(read_back(stub, image.name)[1]).hexdigest() == image.sha256


def test_focus_follows_the_subject_center_does_not(stub):
    dataset = new_dataset(stub)
    # A plain canvas with a detailed object near the right edge.
    pixels = np.full((400, 1000, 3), 128, np.uint8)
    pixels[150:250, 820:920] = np.random.default_rng(0).integers(0, 256, (100, 100, 3))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    upload(stub, dataset.name, buffer.getvalue())
    focus = crop_all(stub, dataset.name, pb.CROP_MODE_FOCUS, 512, 512)[0].image.crop.box
    assert focus.left <= 820 and focus.left + focus.width >= 920
    center = crop_all(stub, dataset.name, pb.CROP_MODE_CENTER, 512, 512)[0].image.crop.box
    assert (center.left, center.top, center.width, center.height) == (300, 0, 400, 400)


def test_batch_crop_reports_progress_and_upscales_small_images(stub):
    dataset = new_dataset(stub, family=pb.MODEL_FAMILY_SDXL)
    big = [upload(stub, dataset.name, image_bytes(1400, 1100, seed=i)).name for i in range(4)]
    small = upload(stub, dataset.name, image_bytes(300, 200, seed=99)).name
    events = crop_all(stub, dataset.name, pb.CROP_MODE_CENTER, 1024, 768)
    assert [e.done for e in events] == [1, 2, 3, 4, 5, 5]
    assert all(e.total == 5 for e in events)
    summary = events[-1]
    assert not summary.HasField("image") and summary.upscaled_count == 1
    by_name = {e.image.name: e.image for e in events[:-1]}
    assert set(by_name) == {*big, small}
    assert by_name[small].crop.upscaled and any("upscaled" in w for w in by_name[small].warnings)
    assert not any(by_name[n].crop.upscaled for n in big)
    # Re-cropping to a size that fits removes the warning again.
    events = crop_all(stub, dataset.name, pb.CROP_MODE_CENTER, 1024, 1024, names=[small])
    assert events[0].image.crop.upscaled  # still smaller than 1024
    assert sum("upscaled" in w for w in events[0].image.warnings) == 1


def test_manual_crop(stub, store):
    dataset = new_dataset(stub)
    image = upload(stub, dataset.name, image_bytes(900, 700))
    updated = stub.UpdateImage(pb.UpdateImageRequest(
        image=pb.Image(name=image.name, crop=pb.Crop(box=pb.CropBox(left=100, top=50, width=600, height=400),
                                                     target_width=768, target_height=512)),
        update_mask={"paths": ["crop"]}))
    assert updated.crop.mode == pb.CROP_MODE_MANUAL and updated.crop.box.left == 100
    assert store.list_keys(image.name + "/crops/") == []  # rendered only when someone looks
    meta, picture = read_back(stub, image.name, pb.IMAGE_VARIANT_CROPPED)
    assert Image.open(io.BytesIO(picture)).size == (768, 512) == (meta.width, meta.height)
    old_keys = set(store.list_keys(image.name + "/crops/"))
    assert len(old_keys) == 1
    # A new crop replaces the old object (no snapshot holds it).
    stub.UpdateImage(pb.UpdateImageRequest(
        image=pb.Image(name=image.name, crop=pb.Crop(box=pb.CropBox(left=0, top=0, width=700, height=700),
                                                     target_width=512, target_height=512)),
        update_mask={"paths": ["crop"]}))
    assert store.list_keys(image.name + "/crops/") == []  # the old render went with its crop
    read_back(stub, image.name, pb.IMAGE_VARIANT_CROPPED)
    new_keys = set(store.list_keys(image.name + "/crops/"))
    assert len(new_keys) == 1 and new_keys != old_keys
    code, _, fields = failure(stub.UpdateImage, pb.UpdateImageRequest(
        image=pb.Image(name=image.name, crop=pb.Crop(box=pb.CropBox(left=500, top=0, width=500, height=500),
                                                     target_width=512, target_height=512)),
        update_mask={"paths": ["crop"]}))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["image.crop.box"])


def test_crop_mode_required(stub):
    dataset = new_dataset(stub)
    code, _, fields = failure(crop_all, stub, dataset.name, pb.CROP_MODE_MANUAL, 512, 512)
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["mode"])


@pytest.mark.parametrize(("size", "target", "window"), [
    ((1000, 500), (512, 512), (500, 500)), ((500, 1000), (768, 512), (500, 333)),
    ((600, 900), (512, 768), (600, 900)), ((1024, 1024), (1024, 768), (1024, 768)),
])
def test_max_window(size, target, window):
    assert max_window(*size, *target) == window


def test_saliency_and_window_placement():
    grey = np.full((64, 96), 0.5, np.float32)
    grey[20:40, 70:90] = np.random.default_rng(1).random((20, 20))
    saliency = spectral_residual_saliency(grey)
    assert abs(float(saliency.sum()) - 1) < 1e-5
    assert saliency[:, 70:90].sum() > 0.5
    box = best_window(saliency, 960, 640, 640, 640)
    assert box.left + box.width >= 900 and box.top == 0
    assert center_box(960, 640, 512, 512).left == 160
