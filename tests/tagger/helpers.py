"""Shared test data for the tagger tests: a WD-like vocabulary and in-memory images."""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image

# Four ratings, general tags (two kaomoji among them) and two characters.
WD_TAGS: tuple[tuple[str, int], ...] = (
    ("general", 9), ("sensitive", 9), ("questionable", 9), ("explicit", 9),
    ("1girl", 0), ("long_hair", 0), ("^_^", 0), ("o_o", 0), ("blue_sky", 0), ("guro", 0),
    ("hatsune_miku", 4), ("kagamine_rin", 4),
)  # fmt: skip


def encode(image: Image.Image, fmt: str = "PNG", **save_options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_options)
    return buffer.getvalue()


def solid_png(rgb: Sequence[int], size: tuple[int, int] = (32, 32)) -> bytes:
    return encode(Image.new("RGB", size, tuple(rgb)))
