"""What an upload's pixels mean: bit depth, colour profiles and EXIF orientation, as stored and as shown."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from kiln.v1 import dataset_pb2 as pb
from services.common.bundled_data import samples_dir
from tests.dataset.helpers import image_bytes, new_dataset, upload
from tests.dataset.image_files import (
    ADOBE_RGB,
    DISPLAY_P3,
    WideGamut,
    grey_profile,
    jpeg_segment_markers,
    pixels,
    srgb_encode,
)

# Colours a wide gamut shows differently from sRGB, inside sRGB's gamut so nothing is clipped.
PATCHES = np.array([[200, 60, 40], [60, 160, 80], [40, 80, 200], [128, 128, 128], [230, 200, 120], [90, 40, 110]])
PATCH = 64


@pytest.fixture(scope="module")
def dataset(stub):
    return new_dataset(stub)


def read_back(stub, name: str, variant: int = pb.IMAGE_VARIANT_ORIGINAL) -> bytes:
    return b"".join(r.chunk for r in stub.ReadImage(pb.ReadImageRequest(name=name, variant=variant)))


def patchwork() -> Image.Image:
    """Flat patches side by side: each patch's centre survives lossy coding and scaling."""
    row = np.repeat(PATCHES[None, :, :], PATCH, axis=0).repeat(PATCH, axis=1).astype(np.uint8)
    return Image.fromarray(row, "RGB")


def patch_means(image: Image.Image) -> np.ndarray:
    """Each patch's mean colour, from its middle half (away from the edges a codec blurs)."""
    values = np.asarray(image.convert("RGB"), np.float64)
    step = values.shape[1] / len(PATCHES)
    rows = slice(values.shape[0] // 4, values.shape[0] * 3 // 4)
    return np.array([values[rows, round(step * (i + 0.25)):round(step * (i + 0.75))].mean(axis=(0, 1))
                     for i in range(len(PATCHES))])


def test_dark_16_bit_greyscale_keeps_its_scale(stub, dataset):
    # A 16-bit image whose values all stay below 256 is very dark, not an 8-bit image.
    values = np.tile(np.linspace(0, 255, 96).astype(np.uint16), (80, 1))
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    assert buffer.getvalue()[24] == 16  # the file says 16 bits per sample
    image = upload(stub, dataset.name, buffer.getvalue())
    stored = pixels(read_back(stub, image.name))
    expected = np.floor(values / 65535 * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(stored[:, :, 0], expected)
    assert stored.max() <= 1


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_low_bit_greyscale_spans_the_full_scale(stub, dataset, depth):
    levels = 2 ** depth
    values = (np.arange(96) % levels).astype(np.uint8)[None, :].repeat(80, axis=0)
    buffer = io.BytesIO()
    Image.fromarray(values * (255 // (levels - 1))).convert("L").save(buffer, format="PNG", bits=depth)
    assert buffer.getvalue()[24] == depth
    image = upload(stub, dataset.name, buffer.getvalue(), filename=f"grey{depth}.png")
    stored = pixels(read_back(stub, image.name))
    assert np.array_equal(stored[:, :, 0], values * (255 // (levels - 1)))


def with_profile(space: WideGamut, fmt: str) -> bytes:
    buffer = io.BytesIO()
    options = {"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}
    patchwork().save(buffer, format=fmt, icc_profile=space.profile(), **options)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("space", [ADOBE_RGB, DISPLAY_P3], ids=["adobe-rgb", "display-p3"])
def test_wide_gamut_colours_are_converted_to_srgb(stub, dataset, space, fmt):
    data = with_profile(space, fmt)
    image = upload(stub, dataset.name, data, filename=f"wide.{fmt.lower()}")
    expected = space.in_srgb(PATCHES)
    # The raw values differ from sRGB's by far more than any codec's error: a check with teeth.
    assert np.abs(expected - PATCHES).max() > 20
    assert any("colour profile" in w and space.description in w and "sRGB" in w for w in image.warnings)

    stored = Image.open(io.BytesIO(read_back(stub, image.name)))
    assert "icc_profile" not in stored.info  # nothing left for a reader to apply twice
    assert np.abs(patch_means(stored) - expected).max() <= 3

    thumbnail = Image.open(io.BytesIO(read_back(stub, image.name, pb.IMAGE_VARIANT_THUMBNAIL)))
    assert np.abs(patch_means(thumbnail) - patch_means(stored)).max() <= 4


def test_a_photo_with_its_cameras_adobe_rgb_profile_is_converted(stub, dataset):
    data = (samples_dir() / "rocket.jpg").read_bytes()
    embedded = ImageCms.ImageCmsProfile(io.BytesIO(Image.open(io.BytesIO(data)).info["icc_profile"]))
    assert ImageCms.getProfileDescription(embedded).strip() == "Adobe RGB (1998)"
    image = upload(stub, dataset.name, data, filename="rocket.jpg")
    assert "colour profile 'Adobe RGB (1998)' converted to sRGB" in image.warnings
    raw = pixels(data)
    stored = pixels(read_back(stub, image.name))
    expected = ADOBE_RGB.in_srgb(raw.reshape(-1, 3)).reshape(raw.shape)
    assert np.abs(stored - expected).max() <= 1
    assert np.abs(stored.astype(np.int16) - raw).mean() > 3  # far from the unconverted values


def test_an_srgb_profile_is_dropped_without_touching_the_pixels(stub, dataset):
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(patchwork())).save(buffer, format="JPEG", quality=90, icc_profile=srgb)
    data = buffer.getvalue()
    image = upload(stub, dataset.name, data, filename="srgb.jpg")
    stored = read_back(stub, image.name)
    assert image.content_type == "image/jpeg"  # not re-encoded
    assert 0xE2 not in jpeg_segment_markers(stored) and "icc_profile" not in Image.open(io.BytesIO(stored)).info
    assert len(stored) == len(data) - len(srgb) - 18  # one APP2 segment: marker, length, ICC_PROFILE header
    assert np.array_equal(pixels(stored), pixels(data))
    assert any("sRGB" in w for w in image.warnings)


def test_greyscale_with_its_own_profile_is_converted(stub, dataset):
    # Linear-light grey: a mid value is far brighter in sRGB's curve. (Near black, where that curve is
    # steepest, the colour engine's 8-bit tables round coarsely: the values start above it.)
    values = np.tile(np.linspace(16, 255, 96).astype(np.uint8), (80, 1))
    buffer = io.BytesIO()
    Image.fromarray(values, "L").save(buffer, format="PNG", icc_profile=grey_profile("Linear grey", 1.0))
    image = upload(stub, dataset.name, buffer.getvalue(), filename="linear-grey.png")
    assert "colour profile 'Linear grey' converted to sRGB" in image.warnings
    stored = pixels(read_back(stub, image.name))
    assert np.abs(stored[:, :, 0] - srgb_encode(values / 255)).max() <= 1.5
    assert (stored[:, :, 0] == stored[:, :, 2]).all()  # still grey


def test_a_profile_that_does_not_fit_the_pixels_is_ignored(stub, dataset):
    # A greyscale image carrying an RGB profile: no colour engine can apply it.
    buffer = io.BytesIO()
    Image.fromarray(np.tile(np.arange(96, dtype=np.uint8), (80, 1)), "L").save(
        buffer, format="PNG", icc_profile=ADOBE_RGB.profile())
    image = upload(stub, dataset.name, buffer.getvalue(), filename="grey-with-rgb-profile.png")
    stored = Image.open(io.BytesIO(read_back(stub, image.name)))
    assert "icc_profile" not in stored.info
    assert np.array_equal(np.asarray(stored)[:, :, 0], np.tile(np.arange(96, dtype=np.uint8), (80, 1)))
    assert any("colour profile" in w and "ignored" in w for w in image.warnings)


@pytest.mark.parametrize("orientation", [0, 9, 255, 65535])
def test_invalid_exif_orientation_is_ignored_and_the_bytes_kept(stub, dataset, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = image_bytes(200, 100, fmt="JPEG", quality=90, exif=exif, seed=orientation)
    image = upload(stub, dataset.name, data, filename="odd.jpg")
    assert (image.content_type, image.width, image.height) == ("image/jpeg", 200, 100)
    assert read_back(stub, image.name) == data
    assert image.warnings == [f"EXIF orientation {orientation} is not a valid value (1-8); ignored"]
