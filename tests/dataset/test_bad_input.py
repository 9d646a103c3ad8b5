"""Bad input gets a precise status, leaves nothing behind, and the service keeps serving."""

from __future__ import annotations

import threading

import grpc
import pytest

from kiln.v1 import dataset_pb2 as pb
from services.common.internal_client import internal_channel
from services.common.objectstore import ObjectStore
from tests.common.metrics_helpers import RPC_COUNT, scrape, value, wait_until_served
from tests.dataset.helpers import (
    failure,
    image_bytes,
    new_dataset,
    png_declaring,
    upload,
    upload_messages,
)
from tests.servers import TEST_AUTH

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture
def dataset(stub):
    return new_dataset(stub)


def assert_nothing_left(stub, store: ObjectStore, dataset: pb.Dataset, images: int = 0) -> None:
    listed = stub.ListImages(pb.ListImagesRequest(parent=dataset.name))
    assert listed.total_size == images
    keys = store.list_keys(dataset.name + "/images/")
    assert len(keys) == images, keys  # the original (thumbnails are drawn on first view)
    # The service keeps serving: a good upload still works.
    good = upload(stub, dataset.name, image_bytes(seed=hash(dataset.name) % 1000))
    stub.DeleteImage(pb.DeleteImageRequest(name=good.name))


def jpeg_bytes() -> bytes:
    return image_bytes(200, 150, fmt="JPEG", quality=90)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"this is not an image at all, just text", "UNSUPPORTED_FORMAT"),
        (b"", "EMPTY_FILE"),
        (image_bytes(fmt="GIF"), "UNSUPPORTED_FORMAT"),
        (image_bytes(fmt="WEBP"), "UNSUPPORTED_FORMAT"),
        (image_bytes(fmt="BMP"), "UNSUPPORTED_FORMAT"),
        (image_bytes(fmt="TIFF"), "UNSUPPORTED_FORMAT"),
        (image_bytes(400, 300)[:3000], "CORRUPT_IMAGE"),
        (jpeg_bytes()[: len(jpeg_bytes()) // 2], "CORRUPT_IMAGE"),
        (png_declaring(30000, 30000), "TOO_MANY_PIXELS"),
        (image_bytes(40, 30), "IMAGE_TOO_SMALL"),
    ],
    ids=["text-named-png", "zero-bytes", "gif", "webp", "bmp", "tiff", "truncated-png", "truncated-jpeg",
         "decompression-bomb", "too-small"],
)
def test_rejected_content(stub, store, dataset, data, reason):
    code, got_reason, fields = failure(upload, stub, dataset.name, data, filename="photo.png")
    assert (code, got_reason) == (INVALID, reason)
    assert fields == ["chunk"]
    assert_nothing_left(stub, store, dataset)


def test_corrupted_png_checksum(stub, store, dataset):
    data = bytearray(image_bytes(300, 200))
    data[40] ^= 0xFF  # inside IDAT: the chunk CRC no longer matches
    code, reason, _ = failure(upload, stub, dataset.name, bytes(data))
    assert (code, reason) == (INVALID, "CORRUPT_IMAGE")
    assert_nothing_left(stub, store, dataset)


def test_over_the_size_limit_stops_reading(stub, store, dataset, dataset_settings):
    limit = dataset_settings.max_upload_bytes
    sent = []

    def endless():
        yield pb.UploadImageRequest(metadata=pb.UploadImageMetadata(parent=dataset.name, filename="big.png",
                                                                    role=pb.IMAGE_ROLE_TRAINING))
        chunk = image_bytes(64, 64) + b"\0" * (3 * 1024 * 1024)
        while sum(sent) < limit * 3:  # bounded, but far past the limit
            sent.append(len(chunk))
            yield pb.UploadImageRequest(chunk=chunk)

    code, reason, fields = failure(stub.UploadImage, endless())
    assert (code, reason, fields) == (INVALID, "FILE_TOO_LARGE", ["chunk"])
    assert sum(sent) < limit * 3, "the server kept reading after the limit"
    assert_nothing_left(stub, store, dataset)


def test_declared_size_over_limit(stub, dataset, dataset_settings):
    limit = dataset_settings.max_upload_bytes
    code, reason, fields = failure(upload, stub, dataset.name, image_bytes(), size_bytes=limit + 1)
    assert (code, reason, fields) == (INVALID, "FILE_TOO_LARGE", ["metadata.size_bytes"])


def test_declared_size_mismatch(stub, store, dataset):
    data = image_bytes()
    code, reason, fields = failure(upload, stub, dataset.name, data, size_bytes=len(data) + 1)
    assert (code, reason, fields) == (INVALID, "SIZE_MISMATCH", ["metadata.size_bytes"])
    assert_nothing_left(stub, store, dataset)


def test_stream_aborted_half_way(stub, store, dataset, service):
    upload_calls = "/kiln.v1.DatasetService/UploadImage"
    before = value(scrape(service.server.metrics_url), RPC_COUNT, method=upload_calls)
    first_chunk_sent = threading.Event()
    release = threading.Event()
    data = image_bytes(600, 400)

    def half_then_wait():
        messages = list(upload_messages(dataset.name, data, chunk=len(data) // 2 + 1))
        yield messages[0]
        yield messages[1]
        first_chunk_sent.set()
        release.wait(60)  # never yields the rest: the client cancels first

    call = stub.UploadImage.future(half_then_wait())
    try:
        assert first_chunk_sent.wait(30)
        call.cancel()
        with pytest.raises(grpc.FutureCancelledError):
            call.result()
        # The service may see the cancelled stream end early, as if the upload were shorter, and
        # clean up what it began storing a moment later.
        wait_until_served(service.server.metrics_url, upload_calls, before + 1)
        assert_nothing_left(stub, store, dataset)
    finally:
        # Only now may the request generator end: ending it earlier could half-close the stream
        # before the cancel lands, which is a complete (truncated) upload, not an aborted one.
        release.set()


def test_chunks_before_metadata(stub, store, dataset):
    messages = list(upload_messages(dataset.name, image_bytes()))
    code, reason, fields = failure(stub.UploadImage, iter([messages[1], messages[0]]))
    assert (code, reason, fields) == (INVALID, "METADATA_FIRST", ["metadata"])
    assert_nothing_left(stub, store, dataset)


def test_metadata_twice(stub, dataset):
    messages = list(upload_messages(dataset.name, image_bytes()))
    code, reason, _ = failure(stub.UploadImage, iter([messages[0], messages[0], *messages[1:]]))
    assert (code, reason) == (INVALID, "METADATA_REPEATED")


def test_empty_stream(stub):
    code, reason, fields = failure(stub.UploadImage, iter([]))
    assert (code, reason, fields) == (INVALID, "METADATA_FIRST", ["metadata"])


@pytest.mark.parametrize("filename", ["../../etc/passwd.png", "a/b.png", "..\\evil.png", "C:\\x.png", "..", ""])
def test_filenames_with_paths(stub, store, dataset, filename):
    code, _, fields = failure(upload, stub, dataset.name, image_bytes(), filename=filename)
    assert code == INVALID and fields == ["metadata.filename"]
    assert_nothing_left(stub, store, dataset)


def test_filename_not_utf8(stub, store, dataset, service):
    meta = pb.UploadImageRequest(metadata=pb.UploadImageMetadata(
        parent=dataset.name, filename="ab.png", role=pb.IMAGE_ROLE_TRAINING)).SerializeToString()
    broken = meta.replace(b"ab.png", b"a\xff.png")
    chunk = pb.UploadImageRequest(chunk=image_bytes()).SerializeToString()
    with internal_channel(service.address, TEST_AUTH) as channel:
        raw_upload = channel.stream_unary("/kiln.v1.DatasetService/UploadImage",
                                          request_serializer=lambda b: b, response_deserializer=pb.Image.FromString)
        code, reason, fields = failure(raw_upload, iter([broken, chunk]))
    assert (code, reason, fields) == (INVALID, "INVALID_ARGUMENT", ["metadata.filename"])
    assert_nothing_left(stub, store, dataset)


def test_unknown_dataset(stub):
    for call, request in [
        (stub.GetDataset, pb.GetDatasetRequest(name="datasets/doesnotexist")),
        (stub.ListImages, pb.ListImagesRequest(parent="datasets/doesnotexist")),
        (stub.GetImage, pb.GetImageRequest(name="datasets/doesnotexist/images/abc")),
    ]:
        code, reason, _ = failure(call, request)
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    code, _, _ = failure(upload, stub, "datasets/doesnotexist", image_bytes())
    assert code == grpc.StatusCode.NOT_FOUND


def test_malformed_names(stub):
    code, _, fields = failure(stub.GetDataset, pb.GetDatasetRequest(name="datasets/../x"))
    assert (code, fields) == (INVALID, ["name"])
    code, _, fields = failure(stub.GetImage, pb.GetImageRequest(name="images/x"))
    assert (code, fields) == (INVALID, ["name"])


def test_crop_size_not_in_family(stub, dataset):
    upload(stub, dataset.name, image_bytes(300, 200))
    code, _, fields = failure(stub.CropImages, pb.CropImagesRequest(
        parent=dataset.name, mode=pb.CROP_MODE_CENTER, target_width=1024, target_height=1024))
    assert code == INVALID and fields == ["target_width", "target_height"]
    code, _, fields = failure(stub.CropImages, pb.CropImagesRequest(
        parent=dataset.name, mode=pb.CROP_MODE_CENTER, target_width=512, target_height=468))
    assert code == INVALID and fields == ["target_width", "target_height"]


@pytest.mark.parametrize(
    ("tags", "field"),
    [(["ok", ""], "metadata.tags[1]"), (["  "], "metadata.tags[0]"), (["x" * 129], "metadata.tags[0]"),
     (["a, b"], "metadata.tags[0]"), (["same", "same"], "metadata.tags[1]"), (["bell\x07"], "metadata.tags[0]")],
)
def test_bad_tags_on_upload(stub, store, dataset, tags, field):
    code, _, fields = failure(upload, stub, dataset.name, image_bytes(), tags=tags)
    assert code == INVALID and fields == [field]
    assert_nothing_left(stub, store, dataset)


def test_caption_over_length_limit(stub, dataset):
    image = upload(stub, dataset.name, image_bytes())
    too_many = [f"tag number {i:04d} with some words" for i in range(150)]
    code, _, fields = failure(stub.UpdateImage, pb.UpdateImageRequest(
        image=pb.Image(name=image.name, tags=too_many), update_mask={"paths": ["tags"]}))
    assert code == INVALID and fields == ["image.tags"]
    assert list(stub.GetImage(pb.GetImageRequest(name=image.name)).tags) == []


def test_duplicate_request_id_with_other_body(stub):
    first = pb.CreateDatasetRequest(dataset=pb.Dataset(display_name="one", family=pb.MODEL_FAMILY_SD15),
                                    request_id="req-dup-1")
    created = stub.CreateDataset(first)
    assert stub.CreateDataset(first).name == created.name  # an honest retry
    other = pb.CreateDatasetRequest(dataset=pb.Dataset(display_name="two", family=pb.MODEL_FAMILY_SD15),
                                    request_id="req-dup-1")
    code, reason, fields = failure(stub.CreateDataset, other)
    assert (code, reason, fields) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED", ["request_id"])
    names = [d.display_name for d in stub.ListDatasets(pb.ListDatasetsRequest(page_size=100)).datasets]
    assert "two" not in names


def test_upload_request_id_with_other_bytes(stub, store, dataset):
    upload(stub, dataset.name, image_bytes(seed=1), request_id="up-1")
    code, reason, _ = failure(upload, stub, dataset.name, image_bytes(seed=2), request_id="up-1")
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    assert stub.ListImages(pb.ListImagesRequest(parent=dataset.name)).total_size == 1


def test_invalid_dataset_fields_listed_together(stub):
    code, _, fields = failure(stub.CreateDataset, pb.CreateDatasetRequest(
        dataset=pb.Dataset(display_name="", default_repeat=5000)))
    assert code == INVALID
    assert sorted(fields) == ["dataset.default_repeat", "dataset.display_name", "dataset.family"]


def test_bad_page_token(stub, dataset):
    code, _, fields = failure(stub.ListImages, pb.ListImagesRequest(parent=dataset.name, page_token="garbage!"))
    assert (code, fields) == (INVALID, ["page_token"])
