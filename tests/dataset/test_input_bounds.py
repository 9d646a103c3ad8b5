"""Oversized and hostile input gets a precise INVALID_ARGUMENT, small enough to deliver, on SQLite and PostgreSQL.

Lists longer than their documented maximum are refused before any element is
looked at; a request with many bad elements gets the first few and a count of
the rest; text PostgreSQL cannot store is refused on both databases alike.
"""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Iterator

import grpc
import pytest

from kiln.v1 import dataset_pb2 as pb
from kiln.v1 import dataset_pb2_grpc
from kiln.v1 import tagging_types_pb2 as ttpb
from services.common.errors import MAX_VIOLATIONS, status_details
from services.common.internal_client import internal_channel
from services.common.pagination import PageTokens
from services.dataset.captions import MAX_TAGS
from services.dataset.requests import MAX_BATCH
from services.dataset.server import running_dataset_service
from tests.dataset.conftest import make_settings
from tests.dataset.helpers import failure, image_bytes, new_dataset, upload
from tests.servers import TEST_AUTH

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def pg_stub(aio, store, s3_settings, postgres, tmp_path_factory) -> Iterator[dataset_pb2_grpc.DatasetServiceStub]:
    url = postgres.create_database(f"bounds_{uuid.uuid4().hex[:8]}")
    settings = make_settings(tmp_path_factory.mktemp("pg-bounds"), s3_settings, dataset_database_url=url)
    with aio.context(running_dataset_service(settings, store)) as running, \
            internal_channel(running.address, TEST_AUTH) as channel:
        yield dataset_pb2_grpc.DatasetServiceStub(channel)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_stub(request) -> dataset_pb2_grpc.DatasetServiceStub:
    return request.getfixturevalue("stub" if request.param == "sqlite" else "pg_stub")


@pytest.fixture
def image(stub) -> pb.Image:
    dataset = new_dataset(stub)
    return upload(stub, dataset.name, image_bytes(seed=hash(dataset.name) % 10_000))


def violations(call, request) -> tuple[grpc.StatusCode, str, list[tuple[str, str]]]:
    try:
        call(request)
    except grpc.RpcError as err:
        info, found = status_details(err)
        assert info is not None, f"no ErrorInfo on {err.code()}: {err.details()}"
        return err.code(), info.reason, [(v.field, v.reason) for v in found]
    raise AssertionError("the call succeeded")


# ---- long lists ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [MAX_TAGS + 1, 1000])
def test_more_tags_than_a_caption_holds_is_one_violation(stub, image, count):
    code, reason, fields = failure(stub.AddImageTags, pb.AddImageTagsRequest(name=image.name, tags=[""] * count))
    assert (code, reason, fields) == (INVALID, "TOO_MANY_TAGS", ["tags"])


def test_a_million_tags_are_refused_while_other_calls_go_on(stub, image):
    # How long the others wait is the oversized_requests benchmark's business; here: they are
    # answered between and during the refusals, and none fails.
    dataset = image.name.rsplit("/images/", 1)[0]
    answered = threading.Event()
    stop = threading.Event()
    errors: list[grpc.RpcError] = []

    def ping() -> None:
        while not stop.is_set():
            try:
                stub.GetDataset(pb.GetDatasetRequest(name=dataset))
            except grpc.RpcError as error:
                errors.append(error)
                return
            answered.set()

    pinger = threading.Thread(target=ping)
    pinger.start()
    try:
        for _ in range(3):
            assert answered.wait(60), "no call was answered"
            answered.clear()
            code, reason, fields = failure(stub.AddImageTags, pb.AddImageTagsRequest(name=image.name,
                                                                                     tags=[""] * 1_000_000))
            assert (code, reason, fields) == (INVALID, "TOO_MANY_TAGS", ["tags"])
        assert answered.wait(60), "no call was answered after the last refusal"
    finally:
        stop.set()
        pinger.join()
    assert errors == []


def test_many_bad_tags_get_the_first_few_and_a_count(stub, image):
    code, reason, found = violations(stub.AddImageTags, pb.AddImageTagsRequest(name=image.name, tags=[""] * MAX_TAGS))
    assert (code, reason) == (INVALID, "INVALID_ARGUMENT")
    assert found[:MAX_VIOLATIONS] == [(f"tags[{i}]", "INVALID_TAG") for i in range(MAX_VIOLATIONS)]
    assert found[MAX_VIOLATIONS:] == [("", "MORE_VIOLATIONS")]


def test_many_bad_image_names_still_get_their_error(stub):
    dataset = new_dataset(stub)
    bad = [f"datasets/{'X' * 32}/images/{'Y' * 200}{i}" for i in range(MAX_BATCH)]
    code, _, found = violations(stub.BatchEditTags, pb.BatchEditTagsRequest(
        parent=dataset.name, names=bad, add=pb.BatchEditTagsRequest.AddTag(tag="x")))
    assert code == INVALID
    assert [f for f, _ in found[:3]] == ["names[0]", "names[1]", "names[2]"]
    assert found[-1] == ("", "MORE_VIOLATIONS") and len(found) <= MAX_VIOLATIONS + 1
    too_many = failure(stub.BatchEditTags, pb.BatchEditTagsRequest(
        parent=dataset.name, names=bad + bad, add=pb.BatchEditTagsRequest.AddTag(tag="x")))
    assert too_many[0] == INVALID and too_many[2] == ["names"]


def test_a_huge_update_mask_is_one_violation(stub):
    dataset = new_dataset(stub)
    code, _, fields = failure(stub.UpdateDataset, pb.UpdateDatasetRequest(
        dataset=pb.Dataset(name=dataset.name), update_mask={"paths": ["nope"] * 100_000}))
    assert (code, fields) == (INVALID, ["update_mask"])


# ---- re-tag options ------------------------------------------------------------------------------------------


def retag(stub, dataset: pb.Dataset, tagger: str = "", **options) -> pb.RetagImagesRequest:
    return pb.RetagImagesRequest(parent=dataset.name, merge=pb.CAPTION_MERGE_APPEND, tagger=tagger,
                                 options=ttpb.TaggingOptions(**options))


@pytest.mark.parametrize(("tagger", "options", "field"), [
    ("", {"undesired_tags": ["u" * 50] * 100_000}, "options.undesired_tags"),
    ("", {"undesired_tags": ["ok", "x" * 129]}, "options.undesired_tags[1]"),
    ("", {"undesired_tags": ["", "fine"]}, "options.undesired_tags[0]"),
    ("", {"undesired_tags": ["a\x00b"]}, "options.undesired_tags[0]"),
    ("", {"undesired_tags": [f"{i:03d}" + "u" * 100 for i in range(50)]}, "options.undesired_tags"),
    ("", {"general_threshold": 7.5}, "options.general_threshold"),
    ("", {"general_threshold": math.nan}, "options.general_threshold"),
    ("", {"character_threshold": -0.01}, "options.character_threshold"),
    ("", {"max_tags": -1}, "options.max_tags"),
    ("taggers/" + "z" * 5000, {}, "tagger"),
    ("taggers/Bad Name", {}, "tagger"),
    ("taggers/", {}, "tagger"),
    ("builtin", {}, "tagger"),
    ("taggers/ok/../x", {}, "tagger"),
])
def test_retag_options_are_checked_before_anything_is_queued(stub, tagger, options, field):
    dataset = new_dataset(stub)
    code, _, fields = failure(stub.RetagImages, retag(stub, dataset, tagger, **options))
    assert (code, fields) == (INVALID, [field])


def test_retag_options_at_their_bounds_are_accepted(stub):
    dataset = new_dataset(stub)
    # Past validation, this service (which has no tagger) refuses for that reason alone.
    request = retag(stub, dataset, "taggers/wd-v1-4_moat.tagger", general_threshold=0.0, character_threshold=1.0,
                    max_tags=0, undesired_tags=["watermark", "long_hair", "watermark"])
    assert failure(stub.RetagImages, request)[:2] == (grpc.StatusCode.FAILED_PRECONDITION, "TAGGING_DISABLED")
    assert failure(stub.RetagImages, retag(stub, dataset, "taggers/builtin"))[1] == "TAGGING_DISABLED"


@pytest.mark.parametrize("tagger", [
    "builtin", "wd-vit-tagger-v3", "a", "0.9_x-y", "z" * 63, "z" * 64, "Upper", "-dash-first", ".dot-first",
    "with space", "slash/inside", "", "ümlaut",
])
def test_tagger_names_follow_the_tagger_service(stub, tagger):
    from services.tagger.registry import NAME_PATTERN

    dataset = new_dataset(stub)
    # Past validation, this service (which has no tagger) refuses for that reason alone.
    expected = "TAGGING_DISABLED" if NAME_PATTERN.match(tagger) else "INVALID_ARGUMENT"
    assert failure(stub.RetagImages, retag(stub, dataset, f"taggers/{tagger}"))[1] == expected


# ---- text the database cannot store ------------------------------------------------------------------------


def test_nul_in_dataset_text_is_invalid(any_stub):
    spec = {"display_name": "ok", "family": pb.MODEL_FAMILY_SD15}
    for field, value in (("description", "a\x00b"), ("display_name", "a\x00b")):
        code, _, fields = failure(any_stub.CreateDataset, pb.CreateDatasetRequest(
            dataset=pb.Dataset(**{**spec, field: value})))
        assert (code, fields) == (INVALID, [f"dataset.{field}"])
    dataset = any_stub.CreateDataset(pb.CreateDatasetRequest(dataset=pb.Dataset(
        **spec, description="line one\n\tline two")))
    assert dataset.description == "line one\n\tline two"
    code, _, fields = failure(any_stub.UpdateDataset, pb.UpdateDatasetRequest(
        dataset=pb.Dataset(name=dataset.name, description="\x00"), update_mask={"paths": ["description"]}))
    assert (code, fields) == (INVALID, ["dataset.description"])


def test_nul_in_image_text_is_invalid(any_stub):
    dataset = new_dataset(any_stub)
    code, _, fields = failure(upload, any_stub, dataset.name, image_bytes(seed=71), filename="a\x00.png")
    assert (code, fields) == (INVALID, ["metadata.filename"])
    code, _, fields = failure(upload, any_stub, dataset.name, image_bytes(seed=71), tags=["a\x00"])
    assert (code, fields) == (INVALID, ["metadata.tags[0]"])
    image = upload(any_stub, dataset.name, image_bytes(seed=71))
    cases = [
        (any_stub.AddImageTags, pb.AddImageTagsRequest(name=image.name, tags=["x\x00y"]), "tags[0]"),
        (any_stub.UpdateImage, pb.UpdateImageRequest(image=pb.Image(name=image.name, tags=["\x00"]),
                                                     update_mask={"paths": ["tags"]}), "image.tags[0]"),
        (any_stub.BatchEditTags, pb.BatchEditTagsRequest(
            parent=dataset.name, add=pb.BatchEditTagsRequest.AddTag(tag="t\x00")), "add.tag[0]"),
        (any_stub.RetagImages, retag(any_stub, dataset, undesired_tags=["\x00"]), "options.undesired_tags[0]"),
    ]
    for call, request, field in cases:
        code, _, fields = failure(call, request)
        assert (code, fields) == (INVALID, [field])
    assert list(any_stub.GetImage(pb.GetImageRequest(name=image.name)).tags) == []


# ---- default repeat ------------------------------------------------------------------------------------------


def test_default_repeat_is_one_to_a_hundred(stub):
    code, _, fields = failure(stub.CreateDataset, pb.CreateDatasetRequest(dataset=pb.Dataset(
        display_name="r", family=pb.MODEL_FAMILY_SD15, default_repeat=101)))
    assert (code, fields) == (INVALID, ["dataset.default_repeat"])
    dataset = new_dataset(stub, default_repeat=100)
    assert dataset.default_repeat == 100
    for value in (101, 1000, 0, -1):
        code, _, fields = failure(stub.UpdateDataset, pb.UpdateDatasetRequest(
            dataset=pb.Dataset(name=dataset.name, default_repeat=value), update_mask={"paths": ["default_repeat"]}))
        assert (code, fields) == (INVALID, ["dataset.default_repeat"])
    assert stub.GetDataset(pb.GetDatasetRequest(name=dataset.name)).default_repeat == 100


# ---- page tokens ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [
    ["2026-01-01T00:00:00"], [["2026-01-01T00:00:00"], "a"], ["2026-01-01T00:00:00", {"a": 1}],
    ["2026-01-01T00:00:00", [1, 2]], ["not a time", "0"],
])
def test_signed_page_tokens_with_malformed_keys_are_invalid(any_stub, key, dataset_settings):
    # Signed as the service signs (every replica shares the secret), as a bug or an older version might.
    encode_token = PageTokens.from_settings(dataset_settings).encode
    dataset = new_dataset(any_stub)
    for call, request in (
        (any_stub.ListDatasets, pb.ListDatasetsRequest(page_token=encode_token(key, "datasets:default"))),
        (any_stub.ListImages, pb.ListImagesRequest(parent=dataset.name, page_token=encode_token(
            key, f"images:default:{dataset.name.split('/')[1]}:None"))),
        (any_stub.ListSnapshots, pb.ListSnapshotsRequest(parent=dataset.name, page_token=encode_token(
            key, f"snapshots:default:{dataset.name.split('/')[1]}"))),
    ):
        code, _, fields = failure(call, request)
        assert (code, fields) == (INVALID, ["page_token"])


def test_issued_page_tokens_still_page(any_stub):
    for i in range(3):
        new_dataset(any_stub, name=f"paged {i}")
    first = any_stub.ListDatasets(pb.ListDatasetsRequest(page_size=1))
    second = any_stub.ListDatasets(pb.ListDatasetsRequest(page_size=1, page_token=first.next_page_token))
    assert second.datasets and second.datasets[0].name != first.datasets[0].name
