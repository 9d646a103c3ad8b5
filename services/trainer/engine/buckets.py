"""Aspect-ratio buckets, as kohya sd-scripts makes and picks them (``model_util`` / ``BucketManager``).

An uncropped image goes to the bucket whose aspect ratio is nearest to its own (or, with
``no_upscale``, to a bucket no larger than itself), is resized to cover it and centre-cropped.
Images cropped by the dataset service are already at their target size: that size is their bucket.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image


def make_bucket_resolutions(
    max_reso: tuple[int, int], min_size: int = 256, max_size: int = 1024, divisible: int = 64
) -> list[tuple[int, int]]:
    """Every (width, height) of about ``max_reso``'s area in ``divisible`` steps (kohya's list)."""
    max_width, max_height = max_reso
    max_area = max_width * max_height
    resos = set()
    side = int(math.sqrt(max_area) // divisible) * divisible
    resos.add((side, side))
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // divisible) * divisible)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += divisible
    return sorted(resos)


@dataclass(frozen=True)
class BucketChoice:
    bucket: tuple[int, int]  # (width, height) the sample is trained at
    resized: tuple[int, int]  # size the image is resized to before the centre crop


@dataclass(frozen=True)
class BucketRules:
    resolution: tuple[int, int]
    min_size: int
    max_size: int
    steps: int
    no_upscale: bool = False

    def predefined(self) -> list[tuple[int, int]]:
        return make_bucket_resolutions(self.resolution, self.min_size, self.max_size, self.steps)

    def select(self, width: int, height: int) -> BucketChoice:
        aspect = width / height
        if not self.no_upscale:
            resos = self.predefined()
            reso = (width, height)
            if reso not in resos:
                ratios = np.array([w / h for w, h in resos])
                reso = resos[int(np.abs(ratios - aspect).argmin())]
            # Scale so that the image covers the bucket, then crop the overhanging side.
            scale = reso[1] / height if aspect > reso[0] / reso[1] else reso[0] / width
            resized = (int(width * scale + 0.5), int(height * scale + 0.5))
            return BucketChoice(reso, resized)
        max_area = self.resolution[0] * self.resolution[1]
        if width * height > max_area:
            resized_w = math.sqrt(max_area * aspect)
            resized_h = max_area / resized_w
            by_width_w = self._round(resized_w)
            by_width_h = self._round(by_width_w / aspect)
            by_height_h = self._round(resized_h)
            by_height_w = self._round(by_height_h * aspect)
            if abs(by_width_w / by_width_h - aspect) < abs(by_height_w / by_height_h - aspect):
                resized = (by_width_w, int(by_width_w / aspect + 0.5))
            else:
                resized = (int(by_height_h * aspect + 0.5), by_height_h)
        else:
            resized = (width, height)
        bucket = (resized[0] - resized[0] % self.steps, resized[1] - resized[1] % self.steps)
        return BucketChoice(bucket, resized)

    def _round(self, value: float) -> int:
        rounded = int(value + 0.5)
        return rounded - rounded % self.steps


def fit_to_bucket(image: Image.Image, choice: BucketChoice) -> tuple[Image.Image, tuple[int, int]]:
    """Resize and centre-crop; returns the image and the crop's (top, left) for SDXL conditioning."""
    if image.size != choice.resized:
        image = image.resize(choice.resized, Image.Resampling.LANCZOS)
    width, height = image.size
    bucket_w, bucket_h = choice.bucket
    left = (width - bucket_w) // 2
    top = (height - bucket_h) // 2
    if (left, top) != (0, 0) or image.size != choice.bucket:
        image = image.crop((left, top, left + bucket_w, top + bucket_h))
    return image, (top, left)
