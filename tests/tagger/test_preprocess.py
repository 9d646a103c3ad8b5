"""Decoding and WD14 preprocessing: hand-computed pixels, and SmilingWolf's steps on real images."""

from __future__ import annotations

import io
import pathlib

import numpy as np
import pytest
from PIL import Image

from services.tagger.errors import ImageDecodeError
from services.tagger.images import decode_image
from services.tagger.wd_preprocess import wd_input
from tests.tagger.helpers import encode

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def preprocess(data: bytes, size: int) -> np.ndarray:
    return wd_input(decode_image(data).image, size)


def test_wide_image_is_centred_on_white_rows_and_turned_to_bgr() -> None:
    image = Image.new("RGB", (8, 4), RED)
    image.paste(BLUE, (4, 0, 8, 4))
    tensor = preprocess(encode(image), size=8)  # already 8 px wide: padding only, no resize
    assert tensor.shape == (8, 8, 3) and tensor.dtype == np.float32
    white_rows = np.r_[0:2, 6:8]  # (8 - 4) // 2 = 2 rows above, 2 below
    assert (tensor[white_rows] == 255).all()
    assert tensor[2:6, :4].reshape(-1, 3).tolist() == [[0.0, 0.0, 255.0]] * 16  # red in BGR
    assert tensor[2:6, 4:].reshape(-1, 3).tolist() == [[255.0, 0.0, 0.0]] * 16  # blue in BGR


def test_odd_padding_puts_the_extra_column_on_the_right() -> None:
    tensor = preprocess(encode(Image.new("RGB", (3, 8), (10, 20, 30))), size=8)
    # (8 - 3) // 2 = 2 white columns on the left, 3 on the right
    assert (tensor[:, [0, 1, 5, 6, 7]] == 255).all()
    assert (tensor[:, 2:5] == [30, 20, 10]).all()


def test_transparency_is_composited_on_white() -> None:
    image = Image.new("RGBA", (3, 1))
    image.putpixel((0, 0), (0, 0, 0, 128))  # half-transparent black -> 255 * (1 - 128/255) = 127
    image.putpixel((1, 0), (200, 100, 0, 0))  # fully transparent -> white
    image.putpixel((2, 0), (10, 20, 30, 255))  # opaque -> itself
    decoded = decode_image(encode(image))
    assert decoded.rgb.tolist() == [[[127, 127, 127], [255, 255, 255], [10, 20, 30]]]
    assert decoded.alpha is not None and decoded.alpha.tolist() == [[128, 0, 255]]


def test_downscaling_is_antialiased_bicubic() -> None:
    # A one-pixel checkerboard halved: antialiased bicubic averages it to mid-grey everywhere,
    # while a point-sampling resize (OpenCV's INTER_CUBIC at 2:1) would keep pure black/white.
    board = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    tensor = preprocess(encode(Image.fromarray(board)), size=32)
    assert tensor[4:-4, 4:-4].min() > 100 and tensor[4:-4, 4:-4].max() < 155


def reference_steps(path_or_image: Image.Image, size: int) -> np.ndarray:
    """SmilingWolf's preprocessing written out step by step with PIL, as the oracle."""
    image = path_or_image.convert("RGBA")
    canvas = Image.new("RGBA", image.size, WHITE)
    canvas.alpha_composite(image)
    image = canvas.convert("RGB")
    side = max(image.size)
    padded = Image.new("RGB", (side, side), WHITE)
    padded.paste(image, ((side - image.size[0]) // 2, (side - image.size[1]) // 2))
    if side != size:
        padded = padded.resize((size, size), Image.BICUBIC)
    return np.asarray(padded, dtype=np.float32)[:, :, ::-1]


def variants(samples: pathlib.Path) -> dict[str, Image.Image]:
    photo = Image.open(samples / "astronaut.png").convert("RGB").crop((0, 40, 512, 400))
    gradient_alpha = photo.copy()
    gradient_alpha.putalpha(Image.linear_gradient("L").resize(photo.size))
    palette = photo.quantize(64)
    palette.info["transparency"] = 0
    return {
        "rgb": photo,
        "grey": Image.open(samples / "camera.png"),
        "rgba": gradient_alpha,
        "palette+transparency": palette,
        "grey+alpha": photo.convert("LA"),
    }


@pytest.mark.parametrize("size", [448, 64])
def test_matches_the_reference_steps_on_real_images(samples: pathlib.Path, size: int) -> None:
    for mode, image in variants(samples).items():
        ours = preprocess(encode(image), size)
        expected = reference_steps(Image.open(io.BytesIO(encode(image))), size)
        assert np.array_equal(ours, expected), mode


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (20, 10), RED)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90 degrees clockwise
    assert decode_image(encode(image, "JPEG", exif=exif)).size == (10, 20)


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    image = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
    assert decode_image(encode(image)).rgb[0, :, 0].tolist() == [0, 128, 255]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"definitely not an image",
        encode(Image.new("RGB", (64, 64), RED))[:60],
        encode(Image.effect_noise((64, 64), 40).convert("RGB"), "JPEG")[:300],
    ],
    ids=["empty", "garbage", "truncated-png", "truncated-jpeg"],
)
def test_undecodable_bytes_raise_a_decode_error(data: bytes) -> None:
    with pytest.raises(ImageDecodeError, match="cannot decode image"):
        decode_image(data)
