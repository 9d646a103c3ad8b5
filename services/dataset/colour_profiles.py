"""Embedded ICC colour profiles: what they make of the pixels in sRGB.

Training and every derived picture read pixel values as sRGB, so an upload's profile is applied once,
when the upload is normalised, and never stored. A profile that already describes sRGB (as many
cameras embed) changes nothing and is only removed.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms

# The colour spaces a profile may describe, and the Pillow mode whose pixels it applies to.
_MODES = {"RGB": "RGB", "GRAY": "L", "CMYK": "CMYK"}
# A profile whose transform moves no colour of this grid by more than one step is sRGB.
_PROBE_LEVELS = np.linspace(0, 255, 16).astype(np.uint8)
_MAX_DESCRIPTION = 64


@dataclass(frozen=True)
class Profile:
    # The Pillow mode of the pixels it describes: RGB, L or CMYK.
    mode: str
    description: str
    # From those pixels to sRGB.
    transform: ImageCms.ImageCmsTransform


def read_profile(icc: bytes) -> Profile | None:
    """The profile, or None when it can't be applied (unreadable, or of a colour space photos aren't in)."""
    try:
        cms = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        mode = _MODES.get(cms.profile.xcolor_space.strip())
        if mode is None:
            return None
        description = ImageCms.getProfileDescription(cms)
        transform = ImageCms.buildTransform(cms, _srgb(), mode, "RGB", ImageCms.Intent.PERCEPTUAL)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None
    shown = "".join(c for c in description if c.isprintable()).strip()[:_MAX_DESCRIPTION]
    return Profile(mode, shown or "unnamed", transform)


def is_srgb(profile: Profile) -> bool:
    if profile.mode != "RGB":
        return False
    probe = _probe()
    difference = np.abs(np.asarray(to_srgb(probe, profile), np.int16) - np.asarray(probe, np.int16))
    return int(difference.max()) <= 1


def to_srgb(image: Image.Image, profile: Profile) -> Image.Image:
    """`image`, in the profile's mode, as sRGB pixels."""
    converted = profile.transform.apply(image)
    converted.info = {}
    return converted


@functools.cache
def _srgb() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@functools.cache
def _probe() -> Image.Image:
    grid = np.stack(np.meshgrid(_PROBE_LEVELS, _PROBE_LEVELS, _PROBE_LEVELS, indexing="ij"), axis=-1)
    return Image.fromarray(grid.reshape(64, 64, 3), "RGB")
