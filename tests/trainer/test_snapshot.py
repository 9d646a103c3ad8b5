"""Reading the dataset service's snapshot manifest and kohya's folder layout."""

from __future__ import annotations

import pytest
from google.protobuf import json_format

from kiln.v1 import dataset_pb2 as pb
from kiln.v1 import snapshot_manifest_pb2 as mpb
from services.trainer.engine.snapshot import (
    DatasetSnapshot,
    LocalDirectoryReader,
    SnapshotError,
    snapshot_from_kohya_folders,
)


def manifest() -> mpb.SnapshotManifest:
    return mpb.SnapshotManifest(
        dataset="datasets/abc", family=pb.MODEL_FAMILY_SD15, default_repeat=10,
        images=[
            mpb.ManifestImage(
                id="img1", role=pb.IMAGE_ROLE_TRAINING, sha256="ab", object_key="datasets/abc/images/img1/original",
                width=1200, height=900,
                crop=mpb.ManifestCrop(box=pb.CropBox(left=100, top=0, width=900, height=900), target_width=512,
                                      target_height=512, object_key="datasets/abc/images/img1/crops/x.png"),
                tags=["mytrigger", "1girl", "solo"], caption="mytrigger, 1girl, solo", repeat=3),
            mpb.ManifestImage(id="reg1", role=pb.IMAGE_ROLE_REGULARIZATION, sha256="cd",
                              object_key="datasets/abc/images/reg1/original", width=640, height=480, tags=["1girl"]),
        ],
    )


def test_manifest_is_read_with_crops_repeats_and_roles() -> None:
    snapshot = DatasetSnapshot.from_json(json_format.MessageToJson(manifest()).encode())
    assert (snapshot.dataset, snapshot.family, snapshot.default_repeat) == ("datasets/abc", "sd15", 10)
    trained, = snapshot.training_images
    assert trained.repeat == 3 and trained.caption == "mytrigger, 1girl, solo"
    assert trained.crop is not None and trained.crop.object_key == "datasets/abc/images/img1/crops/x.png"
    assert trained.source_size == (512, 512)
    regularization, = snapshot.regularization_images
    assert regularization.crop is None and regularization.source_size == (640, 480)
    # No repeat of its own (the job's or the default applies) and no caption text: the tags, joined.
    assert regularization.repeat is None and regularization.caption == "1girl"


def test_malformed_manifest_lists_every_problem() -> None:
    broken = manifest()
    broken.family = pb.MODEL_FAMILY_UNSPECIFIED
    broken.default_repeat = 0
    broken.images[0].role = pb.IMAGE_ROLE_UNSPECIFIED
    broken.images[0].repeat = 0
    broken.images[1].ClearField("object_key")
    broken.images[1].crop.CopyFrom(mpb.ManifestCrop(box=pb.CropBox(left=600, top=0, width=100, height=100),
                                                    target_width=512, target_height=512))
    with pytest.raises(SnapshotError) as raised:
        DatasetSnapshot.from_manifest(broken)
    problems = raised.value.problems
    assert len(problems) == 6
    assert problems[0].startswith("family") and problems[1].startswith("default_repeat")
    assert [p.split(":")[0] for p in problems[2:]] == ["images[0]", "images[0]", "images[1]", "images[1]"]
    assert "role" in problems[2] and "repeat" in problems[3]
    assert "object_key" in problems[4] and "crop.box 100x100+600+0 is not inside the 640x480" in problems[5]


@pytest.mark.parametrize("document", [
    # Fields the proto lacks: here the hand-built format that came before it.
    b'{"kind": "kiln.dataset.snapshot/v1", "family": "sd15", "images": []}',
    b'{"family": "MODEL_FAMILY_SD3"}',  # a family no proto has
    b'{"images": {"id": "x"}}',
    b"not json",
    b"\xff\xfe",
])
def test_a_document_that_is_no_snapshot_manifest_is_refused(document: bytes) -> None:
    with pytest.raises(SnapshotError) as raised:
        DatasetSnapshot.from_json(document)
    problem, = raised.value.problems
    assert problem.startswith("not a kiln.v1.SnapshotManifest")


def test_local_reader_refuses_keys_outside_its_root(tmp_path) -> None:
    (tmp_path / "inside").write_bytes(b"ok")
    reader = LocalDirectoryReader(tmp_path)
    assert reader.read("inside") == b"ok"
    with pytest.raises(KeyError):
        reader.read("../outside")


def test_kohya_folder_layout_gives_repeats_captions_and_regularization(tmp_path, make_image) -> None:
    train = tmp_path / "img" / "5_mytrigger"
    reg = tmp_path / "reg" / "1_person"
    for folder in (train, reg):
        folder.mkdir(parents=True)
    make_image(64, 48, 0).save(train / "a.png")
    (train / "a.txt").write_text("mytrigger, red\n")
    make_image(32, 32, 1).save(train / "b.jpg")
    make_image(32, 32, 2).save(reg / "r.png")
    (tmp_path / "img" / "not_a_repeat_folder").mkdir()

    snapshot, reader = snapshot_from_kohya_folders(tmp_path / "img", tmp_path / "reg", "sdxl")
    assert snapshot.family == "sdxl"
    first, second = snapshot.training_images
    assert (first.repeat, first.caption, first.width, first.height, first.group) == (
        5, "mytrigger, red", 64, 48, "5_mytrigger")
    assert second.caption == "" and second.repeat == 5
    regularization, = snapshot.regularization_images
    assert regularization.repeat == 1
    assert reader.read(regularization.object_key)[:4] == b"\x89PNG"


def test_crop_boxes_are_cut_from_the_original_and_rendered_crops_are_used_as_they_are(tmp_path, make_image) -> None:
    import io

    import numpy as np
    from PIL import Image

    from services.trainer.engine.images import load_source

    original = make_image(120, 60, 4)
    original.save(tmp_path / "original.png")
    rendered = make_image(32, 32, 5)
    rendered.save(tmp_path / "rendered.png")

    def entry(image_id: str, rendered_key: str = "") -> mpb.ManifestImage:
        crop = mpb.ManifestCrop(box=pb.CropBox(left=60, top=0, width=60, height=60), target_width=32,
                                target_height=32, object_key=rendered_key)
        return mpb.ManifestImage(id=image_id, role=pb.IMAGE_ROLE_TRAINING, object_key="original.png", width=120,
                                 height=60, caption="x", crop=crop)

    boxes = mpb.SnapshotManifest(dataset="datasets/abc", family=pb.MODEL_FAMILY_SD15, default_repeat=1,
                                 images=[entry("boxed"), entry("rendered", "rendered.png")])
    boxed, prerendered = DatasetSnapshot.from_manifest(boxes).images
    reader = LocalDirectoryReader(tmp_path)

    picture = load_source(reader, boxed)
    expected = Image.open(io.BytesIO(reader.read("original.png"))).convert("RGB").crop((60, 0, 120, 60))
    expected = expected.resize((32, 32), Image.Resampling.LANCZOS)
    assert picture.size == boxed.source_size == (32, 32)
    assert np.array_equal(np.asarray(picture), np.asarray(expected))
    assert np.array_equal(np.asarray(load_source(reader, prerendered)), np.asarray(rendered))
