"""Tags decided from pixels alone: greyscale, plain backgrounds and their colour, wide/tall images.

Measurements run on a copy at most 256 px on its long side (area-averaged), which keeps them
near 1 ms per image and also smooths JPEG noise; averaging grey pixels stays grey.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import cv2
import numpy as np

from services.tagger.images import DecodedImage
from services.tagger.tags import Tag, TagCategory

ANALYSIS_SIDE = 256
# A pixel is grey when its channels differ by at most this much (JPEG chroma noise stays below).
GREY_SPREAD = 12
GREYSCALE_SHARE = 0.99
# The border band that stands for "the background": 3% of each side, at least 2 px.
BORDER_FRACTION = 0.03
# A border pixel matches the background colour when every channel is within this distance.
BORDER_MATCH = 24
# A side is plain when this share of its band matches; three plain sides make a simple
# background (the subject often crosses the fourth, usually the bottom edge).
PLAIN_SIDE_SHARE = 0.9
PLAIN_SIDES_NEEDED = 3
TRANSPARENT_ALPHA = 16
TRANSPARENT_SHARE = 0.9
# Danbooru's own automatic tags: 4:1 and at least 1024 px on the long side.
ELONGATION = 4.0
ELONGATED_MIN_SIDE = 1024


@dataclass(frozen=True)
class ImageTraits:
    width: int
    height: int
    grey_share: float
    border_colour: tuple[int, int, int]
    # Share of each side's band (top, bottom, left, right) within BORDER_MATCH of border_colour.
    side_plainness: tuple[float, float, float, float]
    transparent_border_share: float | None


def measure(image: DecodedImage) -> ImageTraits:
    width, height = image.size
    rgb = _shrink(image.rgb)
    spread = rgb.max(axis=2).astype(np.int16) - rgb.min(axis=2)
    bands = _border_bands(rgb)
    border = np.concatenate([band.reshape(-1, 3) for band in bands])
    colour = np.median(border, axis=0)
    def plain_share(band: np.ndarray) -> float:
        return float((np.abs(band.reshape(-1, 3).astype(np.int16) - colour).max(axis=1) <= BORDER_MATCH).mean())

    top, bottom, left, right = bands
    plainness = (plain_share(top), plain_share(bottom), plain_share(left), plain_share(right))
    transparent = None
    if image.alpha is not None:
        alpha_bands = _border_bands(_shrink(image.alpha))
        alpha_border = np.concatenate([band.reshape(-1) for band in alpha_bands])
        transparent = float((alpha_border < TRANSPARENT_ALPHA).mean())
    return ImageTraits(
        width=width,
        height=height,
        grey_share=float((spread <= GREY_SPREAD).mean()),
        border_colour=(int(colour[0]), int(colour[1]), int(colour[2])),
        side_plainness=plainness,
        transparent_border_share=transparent,
    )


def trait_tags(traits: ImageTraits) -> list[Tag]:
    tags: list[Tag] = []
    if traits.grey_share >= GREYSCALE_SHARE:
        tags += [_general("monochrome", traits.grey_share), _general("greyscale", traits.grey_share)]
    transparent = traits.transparent_border_share
    if transparent is not None and transparent >= TRANSPARENT_SHARE:
        tags += [_general("simple_background", transparent), _general("transparent_background", transparent)]
    else:
        plain_sides = sorted(traits.side_plainness, reverse=True)[:PLAIN_SIDES_NEEDED]
        if plain_sides[-1] >= PLAIN_SIDE_SHARE:
            score = float(np.mean(plain_sides))
            tags += [
                _general("simple_background", score),
                _general(f"{colour_name(traits.border_colour)}_background", score),
            ]
    long_side, short_side = max(traits.width, traits.height), min(traits.width, traits.height)
    if long_side >= ELONGATED_MIN_SIDE and long_side >= ELONGATION * short_side:
        tags.append(_general("wide_image" if traits.width > traits.height else "tall_image", 1.0))
    return tags


def colour_name(rgb: tuple[int, int, int]) -> str:
    """The Danbooru background colour word for an RGB colour."""
    hue, saturation, value = colorsys.rgb_to_hsv(*(channel / 255 for channel in rgb))
    degrees = hue * 360
    if value <= 0.15:
        return "black"
    if saturation <= 0.12:
        return "white" if value >= 0.9 else "grey"
    if 10 <= degrees < 45 and value < 0.6:
        return "brown"
    if (degrees < 15 or degrees >= 345) and saturation < 0.5 and value > 0.8:
        return "pink"  # a light, washed-out red is what people call pink
    for upper, name in _HUES:
        if degrees < upper:
            return name
    return "red"


_HUES = (
    (15, "red"), (45, "orange"), (70, "yellow"), (160, "green"), (200, "aqua"),
    (255, "blue"), (290, "purple"), (345, "pink"),
)  # fmt: skip


def _general(name: str, score: float) -> Tag:
    return Tag(name, score, TagCategory.GENERAL)


def _shrink(pixels: np.ndarray) -> np.ndarray:
    height, width = pixels.shape[:2]
    scale = ANALYSIS_SIDE / max(height, width)
    if scale >= 1:
        return pixels
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def _border_bands(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    height, width = pixels.shape[:2]
    rows = max(2, round(height * BORDER_FRACTION))
    cols = max(2, round(width * BORDER_FRACTION))
    return pixels[:rows], pixels[-rows:], pixels[:, :cols], pixels[:, -cols:]
