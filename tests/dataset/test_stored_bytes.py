"""What is stored of an upload: the image and the metadata it needs, nothing appended or piled on, and the
sha256, size and duplicates of exactly that."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tracemalloc
import zlib

import grpc
import numpy as np
import pytest
from PIL import Image

from kiln.v1 import dataset_pb2 as pb
from services.dataset.image_check import ImageLimits, check_image
from services.dataset.stored_form import METADATA_LIMIT
from tests.dataset.helpers import failure, image_bytes, new_dataset, upload
from tests.dataset.image_files import (
    jpeg_segment,
    jpeg_segment_markers,
    pixels,
    png_chunk,
    png_chunks,
    with_jpeg_segments,
    with_png_chunks,
    zip_archive,
    zlib_of_zeros,
    ztxt,
)

LIMITS = ImageLimits(max_bytes=50 * 1024 * 1024, max_pixels=64_000_000, min_side=64)


@pytest.fixture(scope="module")
def dataset(stub):
    return new_dataset(stub)


def read_back(stub, name: str) -> bytes:
    return b"".join(r.chunk for r in stub.ReadImage(pb.ReadImageRequest(name=name)))


def assert_stored_as(stub, image: pb.Image, expected: bytes) -> None:
    """The record describes the stored bytes, and those are what is served."""
    stored = read_back(stub, image.name)
    assert stored == expected
    assert (image.size_bytes, image.sha256) == (len(expected), hashlib.sha256(expected).hexdigest())


@pytest.mark.parametrize(("fmt", "tail"), [
    ("PNG", zip_archive()), ("PNG", os.urandom(5000)), ("JPEG", zip_archive()), ("JPEG", b"\x00" * 3000),
    ("JPEG", b"\xff\xd8\xff\xe0" + os.urandom(2000)),  # a second image's start after the first's end
], ids=["png-zip-polyglot", "png-garbage", "jpeg-zip-polyglot", "jpeg-zeros", "jpeg-second-start"])
def test_bytes_after_the_end_of_the_image_are_cut(stub, dataset, fmt, tail):
    data = image_bytes(120, 90, fmt=fmt, seed=len(tail), **({"quality": 90} if fmt == "JPEG" else {}))
    image = upload(stub, dataset.name, data + tail, filename="polyglot.png")
    assert_stored_as(stub, image, data)
    assert image.content_type == f"image/{fmt.lower()}"
    assert image.warnings == [f"{len(tail)} bytes after the end of the image removed"]


def test_megabytes_of_png_text_are_dropped_and_the_pixels_kept(stub, dataset):
    png = image_bytes(120, 90, seed=11)
    small = png_chunk(b"tEXt", b"Software\x00kiln test")
    piles = [png_chunk(b"tEXt", b"Comment\x00" + os.urandom(256 * 1024).hex().encode()) for _ in range(12)]
    data = with_png_chunks(png, [small, *piles])
    assert len(data) > 6 * 1024 * 1024
    image = upload(stub, dataset.name, data, filename="texty.png")
    stored = read_back(stub, image.name)
    assert np.array_equal(pixels(stored), pixels(png))
    # The small chunk is kept, the piles are not, and everything else is as it was.
    assert [kind for kind, _ in png_chunks(stored)] == [kind for kind, _ in png_chunks(with_png_chunks(png, [small]))]
    assert stored == with_png_chunks(png, [small])
    assert_stored_as(stub, image, stored)
    assert len(image.warnings) == 1 and "12 metadata chunks" in image.warnings[0]


def test_jpeg_segments_beyond_the_metadata_limit_are_dropped(stub, dataset):
    jpeg = image_bytes(120, 90, fmt="JPEG", quality=90, seed=12)
    comment = jpeg_segment(0xFE, b"a short comment")
    bulky = [jpeg_segment(0xE0 + n, bytes([n]) * 60000) for n in range(3, 13)]
    data = with_jpeg_segments(jpeg, [comment, *bulky, jpeg_segment(0xFE, os.urandom(60000))])
    image = upload(stub, dataset.name, data, filename="bulky.jpg")
    stored = read_back(stub, image.name)
    assert image.content_type == "image/jpeg"
    assert np.array_equal(pixels(stored), pixels(jpeg))
    assert len(stored) < len(jpeg) + 65536 + len(comment)
    markers = jpeg_segment_markers(stored)
    assert markers[:2] == [0xFE, 0xE3]  # kept in order while they fit
    assert set(jpeg_segment_markers(jpeg)) <= set(markers)  # what decoding needs is all there
    assert_stored_as(stub, image, stored)
    assert any("metadata segments" in w for w in image.warnings)


def test_small_metadata_is_kept_byte_for_byte(stub, dataset):
    exif = Image.Exif()
    exif[0x010F] = "Kiln Camera"
    exif[0x0112] = 1
    jpeg = image_bytes(120, 90, fmt="JPEG", quality=90, seed=13, exif=exif, comment=b"shot for a test")
    png = with_png_chunks(image_bytes(120, 90, seed=13), [png_chunk(b"tEXt", b"parameters\x00a prompt, steps 20")])
    for data in (jpeg, png):
        image = upload(stub, dataset.name, data)
        assert_stored_as(stub, image, data)
        assert not image.warnings


def workflow_json(size: int) -> bytes:
    nodes = {str(n): {"class_type": "KSampler", "inputs": {"seed": n, "steps": 20, "cfg": 7.0}} for n in range(size)}
    return json.dumps(nodes).encode()


def test_a_large_compressed_text_chunk_is_dropped_not_refused(stub, dataset):
    workflow = workflow_json(30000)
    assert len(workflow) > 2 * 1024 * 1024
    png = image_bytes(120, 90, seed=14)
    image = upload(stub, dataset.name, with_png_chunks(png, [ztxt(b"workflow", zlib.compress(workflow))]),
                   filename="comfy.png")
    assert_stored_as(stub, image, png)
    assert len(image.warnings) == 1 and "1 metadata chunk" in image.warnings[0]


def test_a_text_chunk_bomb_is_harmless():
    # A few hundred KiB that inflate to 512 MiB: dropped after inflating no more than the limit allows.
    bomb = ztxt(b"Comment", zlib_of_zeros(512 * 1024 * 1024))
    png = image_bytes(120, 90, seed=15)
    tracemalloc.start()
    try:
        checked = check_image(with_png_chunks(png, [bomb]), LIMITS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert checked.stored_bytes == png
    assert peak < 16 * 1024 * 1024, peak


def test_a_16_bit_png_and_its_8_bit_twin_are_one_image(stub):
    dataset = new_dataset(stub)
    eight = np.random.default_rng(16).integers(0, 256, (80, 96, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(eight).save(buffer, format="PNG", compress_level=6)
    twin = buffer.getvalue()
    deep = image_bytes_16(eight.astype(np.uint16) * 257)
    first = upload(stub, dataset.name, deep, filename="deep.png")
    assert read_back(stub, first.name) == twin  # the 16-bit PNG is stored as exactly its 8-bit twin
    code, reason, _ = failure(upload, stub, dataset.name, twin, filename="twin.png")
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "DUPLICATE_IMAGE")
    assert stub.ListImages(pb.ListImagesRequest(parent=dataset.name)).total_size == 1


def test_an_upload_with_a_tail_is_a_duplicate_of_the_image_without(stub):
    dataset = new_dataset(stub)
    data = image_bytes(120, 90, seed=17)
    first = upload(stub, dataset.name, data + zip_archive())
    code, reason, _ = failure(upload, stub, dataset.name, data)
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "DUPLICATE_IMAGE")
    assert first.sha256 == hashlib.sha256(data).hexdigest()


def image_bytes_16(values: np.ndarray) -> bytes:
    """A 16-bit-per-sample RGB PNG (Pillow writes none), built from its rows."""
    height, width, _ = values.shape
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(height))
    header = np.array([width, height], ">u4").tobytes() + bytes([16, 2, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(rows))
            + png_chunk(b"IEND", b""))


def test_a_png_keeps_its_orientation_behind_a_metadata_limit_of_text(stub, dataset):
    # The text (its 12 bytes of framing included) fills the metadata limit all but 4 bytes; the EXIF block
    # after it, larger than that, says which way is up.
    exif = Image.Exif()
    exif[0x0112] = 6  # turned a quarter: stored upright, 90 wide and 120 high
    png = image_bytes(120, 90, seed=18)
    text = png_chunk(b"tEXt", b"Comment\x00" + b"x" * (METADATA_LIMIT - 24))
    assert len(text) == METADATA_LIMIT - 4 and len(exif.tobytes()) > 4
    data = with_png_chunks(png, [text, png_chunk(b"eXIf", exif.tobytes())])
    image = upload(stub, dataset.name, data, filename="turned.png")
    assert (image.width, image.height) == (90, 120)
    assert image.warnings == ["EXIF orientation 6 applied"]  # nothing dropped: the text fitted
    assert np.array_equal(pixels(read_back(stub, image.name)), np.rot90(pixels(png), -1))


def test_16_bit_grey_is_scaled_without_arrays_of_floats():
    # A ramp through every 16-bit value: each is scaled and rounded to the nearest 8-bit one.
    values = (np.arange(1024 * 1024, dtype=np.uint32) % 65536).astype(np.uint16).reshape(1024, 1024)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    tracemalloc.start()
    try:
        checked = check_image(buffer.getvalue(), LIMITS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    expected = np.floor(values / 65535 * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(checked.stored_bytes)).convert("L")), expected)
    # The file's samples (2 bytes a pixel) and one 4-byte working array; float64 arrays would be 8 each.
    assert peak < 8 * values.size, peak / values.size


def test_jpeg_fill_bytes_before_a_marker_are_followed():
    # Any number of 0xFF may pad a marker: they belong to its segment, kept or dropped with it.
    jpeg = image_bytes(120, 90, fmt="JPEG", quality=90, seed=19)
    within = with_jpeg_segments(jpeg, [b"\xff" * 10_000 + jpeg_segment(0xFE, b"padded")])
    assert check_image(within, LIMITS).stored_bytes == within
    beyond = with_jpeg_segments(jpeg, [b"\xff" * 100_000 + jpeg_segment(0xFE, b"padded")])
    assert check_image(beyond, LIMITS).stored_bytes == jpeg
