"""Reading the dataset service's snapshot manifest and kohya's folder layout."""

from __future__ import annotations

import json

import pytest

from services.trainer.engine.snapshot import (
    DatasetSnapshot,
    LocalDirectoryReader,
    SnapshotError,
    snapshot_from_kohya_folders,
)

MANIFEST = {
    "kind": "kiln.dataset.snapshot/v1", "dataset": "datasets/abc", "family": "sd15", "default_repeat": 10,
    "created": "2026-11-25T12:00:00Z",
    "images": [
        {"id": "img1", "role": "training", "sha256": "ab", "object_key": "datasets/abc/images/img1/original",
         "width": 1200, "height": 900,
         "crop": {"left": 100, "top": 0, "width": 900, "height": 900, "target_width": 512, "target_height": 512,
                  "object_key": "datasets/abc/images/img1/crops/x.png"},
         "tags": ["mytrigger", "1girl", "solo"], "caption": "mytrigger, 1girl, solo", "repeat": 3},
        {"id": "reg1", "role": "regularization", "sha256": "cd", "object_key": "datasets/abc/images/reg1/original",
         "width": 640, "height": 480, "crop": None, "tags": ["1girl"], "caption": "1girl", "repeat": 10},
    ],
}


def test_manifest_is_read_with_crops_repeats_and_roles() -> None:
    snapshot = DatasetSnapshot.from_json(json.dumps(MANIFEST))
    assert snapshot.family == "sd15" and snapshot.default_repeat == 10
    trained, = snapshot.training_images
    assert trained.repeat == 3 and trained.caption == "mytrigger, 1girl, solo"
    assert trained.crop is not None and trained.crop.object_key == "datasets/abc/images/img1/crops/x.png"
    assert trained.source_size == (512, 512)
    regularization, = snapshot.regularization_images
    assert regularization.crop is None and regularization.source_size == (640, 480)


def test_malformed_manifest_lists_every_problem() -> None:
    broken = {**MANIFEST, "kind": "something/v0", "family": "sd3", "images": [{"id": "x", "role": "teacher"}]}
    with pytest.raises(SnapshotError) as raised:
        DatasetSnapshot.from_json(broken)
    problems = raised.value.problems
    assert len(problems) == 3
    assert any("kind" in p for p in problems) and any("family" in p for p in problems)
    assert any(p.startswith("images[0]") for p in problems)


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
    box = {"left": 60, "top": 0, "width": 60, "height": 60, "target_width": 32, "target_height": 32}
    base = {"role": "training", "object_key": "original.png", "width": 120, "height": 60, "caption": "x"}
    manifest = {**MANIFEST, "images": [{**base, "id": "boxed", "crop": box},
                                       {**base, "id": "rendered", "crop": {**box, "object_key": "rendered.png"}}]}
    boxed, prerendered = DatasetSnapshot.from_json(manifest).images
    reader = LocalDirectoryReader(tmp_path)

    picture = load_source(reader, boxed)
    expected = Image.open(io.BytesIO(reader.read("original.png"))).convert("RGB").crop((60, 0, 120, 60))
    expected = expected.resize((32, 32), Image.Resampling.LANCZOS)
    assert picture.size == boxed.source_size == (32, 32)
    assert np.array_equal(np.asarray(picture), np.asarray(expected))
    assert np.array_equal(np.asarray(load_source(reader, prerendered)), np.asarray(rendered))
