"""Decoding uploaded bytes into the one image form every tagger and the detector start from."""

from __future__ import annotations

import io
import pathlib
from collections.abc import Callable
from functools import cached_property

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from services.tagger.errors import ImageDecodeError, TaggerError

WHITE = (255, 255, 255)
# 16-bit and 32-bit integer greyscale: PIL's own conversion clips them at 255 (a white image).
_WIDE_GREY_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})

# Bytes, a file, or a callable fetching the bytes (run in a worker thread, so fetches overlap too).
ImageSource = bytes | pathlib.Path | Callable[[], bytes]


class DecodedImage:
    """An upright RGB image with transparency composited on white (SmilingWolf's first step).

    `alpha` keeps the original transparency (None when the image had none) so background
    analysis can still tell a transparent background from a white one.
    """

    def __init__(self, image: Image.Image, alpha: np.ndarray | None, source_mode: str) -> None:
        self.image = image
        self.alpha = alpha
        self.source_mode = source_mode

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size

    @cached_property
    def rgb(self) -> np.ndarray:
        return np.asarray(self.image)


def decode_image(source: ImageSource) -> DecodedImage:
    """Decode fully (a truncated file fails here, not later) or raise ImageDecodeError."""
    try:
        data = _read(source)
        # No context manager: closing a PIL image frees its pixels, and BytesIO holds no OS handle.
        opened = Image.open(io.BytesIO(data))
        opened.load()
        # Browsers show photos upright by their EXIF orientation, so users judge tags on the
        # upright image; the reference skips this step (its inputs are already upright).
        upright: Image.Image = opened
        if opened.getexif().get(ExifTags.Base.Orientation, 1) != 1:
            upright = ImageOps.exif_transpose(opened)
        return _to_decoded(upright, opened.mode)
    except TaggerError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("cannot decode image: not in a format we can read (PNG, JPEG, WebP...)") from None
    except Exception as error:
        # PIL reports bad input through many exception types (OSError, SyntaxError,
        # ValueError, struct.error, DecompressionBombError...); all mean "not a usable image".
        raise ImageDecodeError(f"cannot decode image: {type(error).__name__}: {error}") from None


def _read(source: ImageSource) -> bytes:
    if isinstance(source, bytes):
        return source
    if isinstance(source, pathlib.Path):
        return source.read_bytes()
    return source()


def _to_decoded(image: Image.Image, source_mode: str) -> DecodedImage:
    if image.mode in _WIDE_GREY_MODES:
        image = _wide_grey_to_8bit(image)
    if not image.has_transparency_data:
        # Opaque: compositing on white is the identity, so convert directly (same pixels).
        return DecodedImage(image if image.mode == "RGB" else image.convert("RGB"), None, source_mode)
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (*WHITE, 255))
    canvas.alpha_composite(rgba)
    return DecodedImage(canvas.convert("RGB"), np.asarray(rgba.getchannel("A")), source_mode)


def _wide_grey_to_8bit(image: Image.Image) -> Image.Image:
    values = np.asarray(image, dtype=np.float64)
    peak = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
    scaled = np.clip(np.rint(values * (255.0 / peak)), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled)
