"""No byte string makes the image check fail with anything but a named rejection.

Valid PNGs and JPEGs of every kind the check handles are mutated (bit flips, overwritten length and
size fields, cut, grown, truncated and spliced onto each other's headers), each outcome is judged,
and a sample goes through the running service to show that none of them answers INTERNAL there.
The generator is seeded (hypothesis, derandomised), so a run finds what the last one found."""

from __future__ import annotations

import io
import random
import tracemalloc
import warnings
import zlib

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms

from services.common.errors import ServiceError
from services.dataset import png_layout
from services.dataset.image_check import ImageLimits, check_image
from services.dataset.stored_form import MAX_PIECES, METADATA_LIMIT
from tests.dataset.helpers import failure, image_bytes, new_dataset, upload
from tests.dataset.image_files import (
    ADOBE_RGB,
    jpeg_segment,
    png_chunk,
    with_jpeg_segments,
    with_png_chunks,
    ztxt,
)

LIMITS = ImageLimits(max_bytes=1024 * 1024, max_pixels=4_000_000, min_side=8)
REJECTIONS = {"EMPTY_FILE", "FILE_TOO_LARGE", "UNSUPPORTED_FORMAT", "CORRUPT_IMAGE", "TOO_MANY_PIXELS",
              "IMAGE_TOO_SMALL", "ANIMATED_IMAGE"}
# Values that make parsers take their edge cases when written over a length or a size.
EDGE_WORDS = (0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


def _saved(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _seed_files(width: int, height: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    return [
        _saved(rgb, "PNG"),
        _saved(rgb, "PNG", interlace=1),  # Adam7
        _saved(rgb.convert("P"), "PNG", transparency=3),
        _saved(Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), "RGBA"), "PNG"),
        _saved(Image.fromarray(rng.integers(0, 4000, (height, width), dtype=np.uint16)), "PNG"),
        _saved(rgb, "PNG", icc_profile=ADOBE_RGB.profile()),
        with_png_chunks(_saved(rgb.convert("L"), "PNG", bits=4),
                        [png_chunk(b"tEXt", b"Comment\x00hello"), ztxt(b"Comment", b"x\x9c" + bytes(8))]),
        _saved(rgb, "JPEG", quality=80),
        _saved(rgb, "JPEG", quality=80, progressive=True),
        _saved(rgb, "JPEG", quality=80, exif=exif, icc_profile=ADOBE_RGB.profile()),
        _saved(rgb.convert("L"), "JPEG"),
        _saved(rgb.convert("CMYK"), "JPEG"),
        _saved(rgb, "JPEG", icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes(),
               restart_marker_blocks=1),
    ]


SEEDS = _seed_files(32, 24)
# Large enough for the service's own limits (64 px on the short side).
SERVICE_SEEDS = _seed_files(96, 72)


def judge(data: bytes, limits: ImageLimits = LIMITS) -> str:
    """The outcome of checking `data`: the rejection's reason, or "ACCEPTED" after seeing that what would
    be stored is a plain sRGB image of the size the check reports. Anything else fails the test."""
    try:
        checked = check_image(data, limits)
    except ServiceError as err:
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.reason in REJECTIONS, err
        assert [v.field for v in err.violations] == ["chunk"]
        return err.reason
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pillow's words on a kept EXIF block it finds odd
        stored = Image.open(io.BytesIO(checked.stored_bytes))
        stored.load()
        assert stored.format == {"image/png": "PNG", "image/jpeg": "JPEG"}[checked.content_type]
        assert stored.size == (checked.width, checked.height)
        assert stored.mode == "RGB" and "icc_profile" not in stored.info
    assert len(checked.stored_bytes) <= len(data) or checked.content_type == "image/png"
    return "ACCEPTED"


@st.composite
def mutants(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        # Most of what a parser reads is in the first few hundred bytes.
        at = draw(st.one_of(st.integers(0, min(len(data), 400)), st.integers(0, len(data))))
        operation = draw(st.sampled_from(["flip", "byte", "word", "cut", "insert", "repeat", "truncate",
                                          "splice", "append"]))
        if operation == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif operation == "byte" and at < len(data):
            data[at] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
        elif operation == "word":
            data[at:at + 4] = draw(st.sampled_from(EDGE_WORDS)).to_bytes(4, "big")
        elif operation == "cut":
            del data[at:at + draw(st.integers(1, 64))]
        elif operation == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif operation == "repeat":
            data[at:at] = data[at:at + draw(st.integers(1, 256))]
        elif operation == "truncate":
            del data[at:]
        elif operation == "splice":
            # One file's header on another's body: whatever the first bytes promise, the rest disagrees.
            other = draw(st.sampled_from(SEEDS))
            data = bytearray(data[:at] + other[draw(st.integers(0, len(other))):])
        elif operation == "append":
            data += draw(st.binary(min_size=1, max_size=64))
    return bytes(data)


def test_seeds_are_accepted():
    assert [judge(seed) for seed in SEEDS] == ["ACCEPTED"] * len(SEEDS)


@pytest.mark.parametrize("index", range(len(SEEDS)))
def test_every_truncation_is_named(index):
    seed = SEEDS[index]
    outcomes = {judge(seed[:end]) for end in range(0, len(seed), max(1, len(seed) // 150))}
    assert outcomes <= REJECTIONS | {"ACCEPTED"}


@pytest.mark.timeout(60)  # about 6 s alone on 2 cores: a hang in a decoder must not hold CI
@settings(max_examples=2000, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutants())
def test_mutated_files_get_a_named_outcome(data):
    judge(data)


@pytest.mark.parametrize("tail", [
    b"",  # the start of a JPEG and nothing else
    image_bytes(96, 80),  # a PNG behind a JPEG's first bytes
    random.Random(1).randbytes(4000),
    b"\xe0\x00\x10JFIF\x00" + random.Random(2).randbytes(2000),
    b"\xdb\xff\xff" + bytes(100),  # a segment length past the end
], ids=["bare-start", "png", "random", "jfif-then-random", "long-segment"])
def test_bytes_that_start_like_a_jpeg_are_corrupt(tail):
    with pytest.raises(ServiceError) as err:
        check_image(b"\xff\xd8\xff" + tail, LIMITS)
    assert err.value.reason == "CORRUPT_IMAGE"


def service_sample(count: int) -> list[bytes]:
    """Mutants for the service, drawn from the same kinds of change with a seeded generator."""
    rng = random.Random(13)
    seeds = SERVICE_SEEDS
    sample = [b"\xff\xd8\xff" + seeds[0], seeds[7][:len(seeds[7]) // 2] + seeds[0][8:]]
    while len(sample) < count:
        data = bytearray(rng.choice(seeds))
        at = rng.randrange(min(len(data), 400))
        kind = rng.randrange(4)
        if kind == 0:
            data[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            data[at:at + 4] = rng.choice(EDGE_WORDS).to_bytes(4, "big")
        elif kind == 2:
            del data[rng.randrange(len(data)):]
        else:
            data = bytearray(data[:at] + rng.choice(seeds)[at:])
        sample.append(bytes(data))
    return sample


def test_the_service_answers_mutants_with_a_named_outcome(stub, dataset_settings):
    limits = ImageLimits(dataset_settings.max_upload_bytes, dataset_settings.max_image_pixels,
                         dataset_settings.min_image_side)
    dataset = new_dataset(stub)
    outcomes = []
    for data in service_sample(60):
        expected = judge(data, limits)
        if expected == "ACCEPTED":
            try:
                upload(stub, dataset.name, data)
                outcomes.append("ACCEPTED")
            except grpc.RpcError as err:  # an earlier mutant may have stored the same image
                assert (err.code(), failure(upload, stub, dataset.name, data)[1]) == (
                    grpc.StatusCode.ALREADY_EXISTS, "DUPLICATE_IMAGE")
                outcomes.append("DUPLICATE_IMAGE")
        else:
            code, reason, fields = failure(upload, stub, dataset.name, data)
            assert (code, reason, fields) == (grpc.StatusCode.INVALID_ARGUMENT, expected, ["chunk"])
            outcomes.append(reason)
    assert "ACCEPTED" in outcomes and "CORRUPT_IMAGE" in outcomes


# --- large inputs: the work of following a file's pieces is bounded whatever their number ---

LARGE_LIMITS = ImageLimits(max_bytes=50 * 1024 * 1024, max_pixels=4_000_000, min_side=8)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_file_of_countless_empty_pieces_is_refused(fmt):
    # A megabyte of empty comments: each would be a piece to follow, then one for the decoder to skip.
    image = SEEDS[7] if fmt == "JPEG" else SEEDS[0]
    if fmt == "JPEG":
        data = with_jpeg_segments(image, [jpeg_segment(0xFE, b"")] * (MAX_PIECES + 1))
    else:
        data = with_png_chunks(image, [png_chunk(b"tEXt", b"")] * (MAX_PIECES + 1))
    tracemalloc.start()
    try:
        with pytest.raises(ServiceError) as err:
            check_image(data, LARGE_LIMITS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.value.reason == "CORRUPT_IMAGE"
    assert f"too many {'segments' if fmt == 'JPEG' else 'chunks'}" in err.value.message
    assert peak < 32 * 1024 * 1024, peak  # the pieces it did follow are small


def test_a_just_countable_file_is_accepted_and_cut_to_the_limit():
    data = with_png_chunks(SEEDS[0], [png_chunk(b"tEXt", b"")] * (MAX_PIECES - 10))
    checked = check_image(data, LARGE_LIMITS)
    # Every empty chunk costs its 12 bytes of framing: as many as fit are kept, the rest dropped.
    kept = METADATA_LIMIT // 12
    assert len(checked.stored_bytes) == len(SEEDS[0]) + 12 * kept
    assert checked.warnings[0].startswith(f"{MAX_PIECES - 10 - kept} metadata chunks")


def test_thousands_of_small_text_bombs_inflate_a_bounded_amount():
    # Each ~100-byte chunk inflates past the whole metadata limit: counted in full, they would cost a
    # metadata limit of inflating each, over a gigabyte in all.
    bomb = ztxt(b"Comment", zlib.compress(bytes(METADATA_LIMIT + 4096), 9))
    assert len(bomb) < 128
    data = with_png_chunks(SEEDS[0], [bomb] * 20_000)
    layout = png_layout.parse(data)
    assert layout is not None
    assert layout.inflated <= png_layout.INFLATE_LIMIT + 1
    checked = check_image(data, LARGE_LIMITS)
    assert checked.stored_bytes == SEEDS[0]
    assert checked.warnings[0].startswith("20000 metadata chunks")


def test_only_the_first_colour_profile_is_inflated():
    # Two profiles are one too many; the second (a bomb Pillow would inflate in turn) is dropped unread.
    first = png_chunk(b"iCCP", b"first\x00\x00" + zlib.compress(ADOBE_RGB.profile()))
    seconds = [png_chunk(b"iCCP", b"again\x00\x00" + zlib.compress(bytes(png_layout.MAX_PROFILE), 9))] * 50
    data = with_png_chunks(SEEDS[0], [first, *seconds])
    layout = png_layout.parse(data)
    assert layout is not None and layout.inflated == len(ADOBE_RGB.profile())
    assert judge(data, LARGE_LIMITS) == "ACCEPTED"


def test_a_fault_in_the_checks_themselves_is_not_blamed_on_the_file():
    # Limits of the wrong type are Kiln's mistake, not the uploader's: it must surface, not read as CORRUPT_IMAGE.
    broken = ImageLimits(max_bytes=1024 * 1024, max_pixels=None, min_side=8)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        check_image(SEEDS[0], broken)
