"""Limits and rules as the contract states them: one upload chunk limit, said where clients read it
and enforced with a BadRequest; a reason on every field violation; sizes out of range said so; the
file-name rules as they are applied."""

from __future__ import annotations

import pathlib
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from kiln.v1 import dataset_pb2 as pb
from services.common.errors import FieldViolation, invalid, status_details
from services.common.upload_limits import MAX_UPLOAD_CHUNK_BYTES
from tests.dataset.helpers import image_bytes, new_dataset, upload

ROOT = pathlib.Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def refusal(call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[grpc.StatusCode, str, list[tuple[str, str]]]:
    """A call expected to fail: its code, its ErrorInfo reason and each violation's (field, reason)."""
    with pytest.raises(grpc.RpcError) as refused:
        result = call(*args, **kwargs)
        if isinstance(result, Iterator):
            list(result)
    info, violations = status_details(refused.value)
    assert info is not None, (refused.value.code(), refused.value.details())
    return refused.value.code(), info.reason, [(v.field, v.reason) for v in violations]


def proto_comment(message: str, field: str) -> str:
    """The comment above `field` in `message` of dataset.proto (or above the rpc named `message`)."""
    text = (ROOT / "protos" / "kiln" / "v1" / "dataset.proto").read_text()
    block = re.search(rf"^(?:message {message} \{{|  rpc {message}\().*?^}}", text, re.S | re.M)
    assert block, message
    lines = block.group(0).splitlines()
    at = next(i for i, line in enumerate(lines) if re.match(rf"\s*(\S+ )+{field} = \d+", line))
    comment: list[str] = []
    for line in reversed(lines[:at]):
        if not line.strip().startswith("//"):
            break
        comment.insert(0, line.strip().removeprefix("//").strip())
    return " ".join(comment)


def chunk_limits_stated(path: pathlib.Path) -> list[float]:
    """Every size in MiB a file states within a few words after "chunk" (comments joined into lines)."""
    text = re.sub(r"\s*\n\s*(?://|#)?\s*", " ", path.read_text())
    return [float(n) for n in re.findall(r"\bchunks?\b[^.;]{0,60}?(\d+(?:\.\d+)?) MiB", text)]


def test_the_chunk_limit_every_document_states_is_the_one_enforced():
    limit = MAX_UPLOAD_CHUNK_BYTES / MiB
    for path in ("protos/kiln/v1/dataset.proto", "README.md", "sdk/python/kiln/uploads.py",
                 "sdk/python/kiln/channel.py"):
        assert set(chunk_limits_stated(ROOT / path)) <= {limit}, path
    assert chunk_limits_stated(ROOT / "protos/kiln/v1/dataset.proto").count(limit) >= 2  # the rpc and the field
    assert limit in chunk_limits_stated(ROOT / "README.md")


@pytest.mark.parametrize("size", [MAX_UPLOAD_CHUNK_BYTES + 1, 5 * MiB, 7 * MiB])
def test_a_chunk_over_the_limit_is_a_bad_request_naming_it(stub, size):
    dataset = new_dataset(stub)
    code, reason, violations = refusal(upload, stub, dataset.name, bytes(size), "big.png", pb.IMAGE_ROLE_TRAINING,
                                       chunk=size)
    assert (code, reason, violations) == (INVALID, "CHUNK_TOO_LARGE", [("chunk", "CHUNK_TOO_LARGE")])
    assert stub.ListImages(pb.ListImagesRequest(parent=dataset.name)).total_size == 0


def test_a_chunk_of_exactly_the_limit_is_taken(stub):
    dataset = new_dataset(stub)
    data = image_bytes(1200, 1200, seed=8201)
    assert len(data) > MAX_UPLOAD_CHUNK_BYTES
    image = upload(stub, dataset.name, data, chunk=MAX_UPLOAD_CHUNK_BYTES)
    assert image.width == 1200


def test_a_negative_size_is_out_of_range_not_a_mismatch(stub):
    dataset = new_dataset(stub)
    assert refusal(upload, stub, dataset.name, image_bytes(seed=8202), "a.png", pb.IMAGE_ROLE_TRAINING,
                   size_bytes=-1) == (INVALID, "OUT_OF_RANGE", [("metadata.size_bytes", "OUT_OF_RANGE")])
    for size in (-1, 0):
        assert refusal(stub.CreateImageUpload, pb.CreateImageUploadRequest(
            parent=dataset.name, role=pb.IMAGE_ROLE_TRAINING, filename="a.png", size_bytes=size)) == (
            INVALID, "OUT_OF_RANGE", [("size_bytes", "OUT_OF_RANGE")])


def test_the_named_violations_carry_their_own_reasons(stub):
    dataset = new_dataset(stub)
    assert refusal(stub.UpdateDataset, pb.UpdateDatasetRequest(
        dataset=pb.Dataset(name=dataset.name, display_name="x"), update_mask={"paths": ["display_name", "colour"]})
    ) == (INVALID, "FIELD_NOT_UPDATABLE", [("update_mask", "FIELD_NOT_UPDATABLE")])
    code, _, violations = refusal(stub.CreateDataset, pb.CreateDatasetRequest(dataset=pb.Dataset(
        display_name="r", family=pb.MODEL_FAMILY_SD15, default_repeat=101)))
    assert (code, violations) == (INVALID, [("dataset.default_repeat", "OUT_OF_RANGE")])
    request_id = f"r-{uuid.uuid4().hex}"
    stub.CreateDataset(pb.CreateDatasetRequest(dataset=pb.Dataset(display_name="a", family=pb.MODEL_FAMILY_SD15),
                                               request_id=request_id))
    assert refusal(stub.CreateDataset, pb.CreateDatasetRequest(dataset=pb.Dataset(
        display_name="b", family=pb.MODEL_FAMILY_SD15), request_id=request_id)) == (
        grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED", [("request_id", "REQUEST_ID_REUSED")])


def test_every_violation_of_a_range_of_bad_requests_has_a_reason(stub):
    dataset = new_dataset(stub)
    image = upload(stub, dataset.name, image_bytes(seed=8203))
    other = new_dataset(stub)
    bad: list[tuple[Callable[..., Any], Any]] = [
        (stub.CreateDataset, pb.CreateDatasetRequest(dataset=pb.Dataset(display_name="", default_repeat=5000))),
        (stub.UpdateDataset, pb.UpdateDatasetRequest(dataset=pb.Dataset(name=dataset.name))),
        (stub.UpdateDataset, pb.UpdateDatasetRequest(dataset=pb.Dataset(name=dataset.name),
                                                     update_mask={"paths": ["nope"] * 200})),
        (stub.UpdateImage, pb.UpdateImageRequest(image=pb.Image(name=image.name), update_mask={"paths": ["width"]})),
        (stub.UpdateImage, pb.UpdateImageRequest(image=pb.Image(name=image.name, repeat=-2),
                                                 update_mask={"paths": ["repeat"]})),
        (stub.CropImages, pb.CropImagesRequest(parent=dataset.name, target_width=500, target_height=500)),
        (stub.BatchDeleteImages, pb.BatchDeleteImagesRequest(parent=other.name, names=[image.name, "x"])),
        (stub.CreateImageUpload, pb.CreateImageUploadRequest(parent="nope", filename="a/b.png", size_bytes=-5,
                                                             repeat=-1)),
        (stub.ListImages, pb.ListImagesRequest(parent=dataset.name, page_size=-1, page_token="forged")),
    ]
    for call, request in bad:
        code, reason, violations = refusal(call, request)
        assert reason and violations, (call, code, reason)
        assert all(field_reason for _, field_reason in violations), (type(request).__name__, violations)


def test_a_violation_made_without_a_reason_goes_out_with_its_errors():
    status = invalid([FieldViolation("x", "why")], reason="SOMETHING_WRONG").to_status()
    bad = [d for d in status.details if d.type_url.endswith("google.rpc.BadRequest")]
    request = error_details_pb2.BadRequest()
    bad[0].Unpack(request)
    assert [(v.field, v.reason) for v in request.field_violations] == [("x", "SOMETHING_WRONG")]


def test_the_file_name_rules_the_contract_states_are_the_ones_applied(stub):
    for message in ("UploadImageMetadata", "CreateImageUploadRequest"):
        said = proto_comment(message, "filename")
        assert "refused" in said and "reduced" not in said, said
    assert "reduced" not in proto_comment("Image", "filename")
    dataset = new_dataset(stub)
    for name in ("../x.png", "a/b.png", "C:\\x.png", "a\\b.png"):
        assert refusal(upload, stub, dataset.name, image_bytes(seed=8204), name) == (
            INVALID, "PATH_IN_FILENAME", [("metadata.filename", "PATH_IN_FILENAME")])
    kept = upload(stub, dataset.name, image_bytes(seed=8204), "  e\u0301t\u00e9.png ")
    assert kept.filename == "\u00e9t\u00e9.png"  # NFC, surrounding spaces removed, nothing else
