"""Captions (ordered tags), batch tag edits, statistics and repeats."""

from __future__ import annotations

import grpc

from kiln.v1 import dataset_pb2 as pb
from services.dataset import captions
from tests.dataset.helpers import failure, image_bytes, new_dataset, upload


def tags_of(stub, name):
    return list(stub.GetImage(pb.GetImageRequest(name=name)).tags)


def test_add_remove_set_tags(stub):
    dataset = new_dataset(stub)
    image = upload(stub, dataset.name, image_bytes(), tags=["1girl", "solo"]).name
    stub.AddImageTags(pb.AddImageTagsRequest(name=image, tags=["smile", "solo"]))
    assert tags_of(stub, image) == ["1girl", "solo", "smile"]
    stub.AddImageTags(pb.AddImageTagsRequest(name=image, tags=["mychar"], position=pb.TAG_POSITION_HEAD))
    assert tags_of(stub, image) == ["mychar", "1girl", "solo", "smile"]
    stub.RemoveImageTags(pb.RemoveImageTagsRequest(name=image, tags=["solo", "not there"]))
    assert tags_of(stub, image) == ["mychar", "1girl", "smile"]
    stub.UpdateImage(pb.UpdateImageRequest(image=pb.Image(name=image, tags=["  long   hair ", "b"]),
                                           update_mask={"paths": ["tags"]}))
    assert tags_of(stub, image) == ["long hair", "b"]


def test_batch_trigger_word_head_and_tail(stub):
    dataset = new_dataset(stub)
    a = upload(stub, dataset.name, image_bytes(seed=1), tags=["red hair", "smile"]).name
    b = upload(stub, dataset.name, image_bytes(seed=2), tags=["smile", "trig"]).name
    c = upload(stub, dataset.name, image_bytes(seed=3)).name
    changed = stub.BatchEditTags(pb.BatchEditTagsRequest(
        parent=dataset.name, add=pb.BatchEditTagsRequest.AddTag(tag="trig", position=pb.TAG_POSITION_HEAD)))
    assert changed.changed_count == 3
    assert [tags_of(stub, n) for n in (a, b, c)] == [["trig", "red hair", "smile"], ["trig", "smile"], ["trig"]]
    again = stub.BatchEditTags(pb.BatchEditTagsRequest(
        parent=dataset.name, add=pb.BatchEditTagsRequest.AddTag(tag="trig", position=pb.TAG_POSITION_HEAD)))
    assert again.changed_count == 0  # no duplicates, nothing moved
    stub.BatchEditTags(pb.BatchEditTagsRequest(
        parent=dataset.name, names=[a], add=pb.BatchEditTagsRequest.AddTag(tag="best", position=pb.TAG_POSITION_TAIL)))
    assert tags_of(stub, a) == ["trig", "red hair", "smile", "best"] and "best" not in tags_of(stub, b)


def test_batch_remove_and_replace(stub):
    dataset = new_dataset(stub)
    a = upload(stub, dataset.name, image_bytes(seed=1), tags=["blonde", "smile"]).name
    b = upload(stub, dataset.name, image_bytes(seed=2), tags=["blonde hair", "blonde"]).name
    replaced = stub.BatchEditTags(pb.BatchEditTagsRequest(
        parent=dataset.name, replace=pb.BatchEditTagsRequest.ReplaceTag(tag="blonde", replacement="blonde hair")))
    assert replaced.changed_count == 2
    assert tags_of(stub, a) == ["blonde hair", "smile"] and tags_of(stub, b) == ["blonde hair"]
    removed = stub.BatchEditTags(pb.BatchEditTagsRequest(
        parent=dataset.name, remove=pb.BatchEditTagsRequest.RemoveTag(tag="smile")))
    assert removed.changed_count == 1 and tags_of(stub, a) == ["blonde hair"]
    code, _, fields = failure(stub.BatchEditTags, pb.BatchEditTagsRequest(
        parent=dataset.name, add=pb.BatchEditTagsRequest.AddTag(tag="a,b")))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["add.tag[0]"])
    code, _, fields = failure(stub.BatchEditTags, pb.BatchEditTagsRequest(parent=dataset.name))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["edit"])


def test_tag_statistics(stub):
    dataset = new_dataset(stub)
    upload(stub, dataset.name, image_bytes(seed=1), tags=["b", "a", "c"])
    upload(stub, dataset.name, image_bytes(seed=2), tags=["a", "c"])
    upload(stub, dataset.name, image_bytes(seed=3), tags=["a", "z"], role=pb.IMAGE_ROLE_REGULARIZATION)
    stats = stub.GetTagStatistics(pb.GetTagStatisticsRequest(parent=dataset.name))
    assert [(t.tag, t.count) for t in stats.tags] == [("a", 3), ("c", 2), ("b", 1), ("z", 1)]
    training = stub.GetTagStatistics(pb.GetTagStatisticsRequest(parent=dataset.name, role=pb.IMAGE_ROLE_TRAINING))
    assert training.image_count == 2 and ("z", 1) not in [(t.tag, t.count) for t in training.tags]


def test_repeats_and_totals(stub):
    dataset = new_dataset(stub, default_repeat=5)
    a = upload(stub, dataset.name, image_bytes(seed=1)).name
    upload(stub, dataset.name, image_bytes(seed=2))
    upload(stub, dataset.name, image_bytes(seed=3), role=pb.IMAGE_ROLE_REGULARIZATION, repeat=9)
    assert stub.GetDataset(pb.GetDatasetRequest(name=dataset.name)).total_repeated_images == 10
    updated = stub.UpdateImage(pb.UpdateImageRequest(image=pb.Image(name=a, repeat=20),
                                                     update_mask={"paths": ["repeat"]}))
    assert (updated.repeat, updated.effective_repeat) == (20, 20)
    assert stub.GetDataset(pb.GetDatasetRequest(name=dataset.name)).total_repeated_images == 25
    stub.UpdateDataset(pb.UpdateDatasetRequest(dataset=pb.Dataset(name=dataset.name, default_repeat=1),
                                               update_mask={"paths": ["default_repeat"]}))
    assert stub.GetDataset(pb.GetDatasetRequest(name=dataset.name)).total_repeated_images == 21
    code, _, fields = failure(stub.UpdateImage, pb.UpdateImageRequest(
        image=pb.Image(name=a, repeat=-1), update_mask={"paths": ["repeat"]}))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["image.repeat"])


def test_caption_helpers():
    assert captions.add_tags(["a", "b"], ["b", "c"], at_head=True) == ["b", "c", "a"]
    assert captions.add_tags(["a", "b"], ["b", "c"], at_head=False) == ["a", "b", "c"]
    assert captions.replace_tag(["a", "b", "c"], "b", "x") == ["a", "x", "c"]
    assert captions.replace_tag(["a", "b", "c"], "b", "c") == ["a", "c"]
    assert captions.caption_text(["a", "b c"]) == "a, b c"


def test_unknown_role_filter_is_refused(stub):
    dataset = new_dataset(stub)
    for call, request in [(stub.GetTagStatistics, pb.GetTagStatisticsRequest(parent=dataset.name, role=7)),
                          (stub.ListImages, pb.ListImagesRequest(parent=dataset.name, role=7))]:
        code, _, fields = failure(call, request)
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["role"])
