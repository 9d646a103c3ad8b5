"""One image's crop, from stored original to stored crop object (no database)."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

from PIL import Image

from services.common.objectstore import ObjectStore
from services.dataset.cropping import Box, Detector, center_box, focus_box, render_crop
from services.dataset.names import crop_key

# Bump when the rendering changes, so new crops never reuse old objects.
RENDER_VERSION = "1"


@dataclass(frozen=True)
class CropResult:
    box: Box
    target_width: int
    target_height: int
    mode: str
    upscaled: bool
    key: str


def load_rgb(store: ObjectStore, key: str) -> Image.Image:
    image = Image.open(io.BytesIO(store.get_bytes(key)))
    image.load()
    return image.convert("RGB") if image.mode != "RGB" else image


def choose_box(rgb: Image.Image, mode: str, target_width: int, target_height: int,
               detector: Detector | None) -> Box:
    if mode == "focus":
        return focus_box(rgb, target_width, target_height, detector)
    return center_box(rgb.width, rgb.height, target_width, target_height)


def store_crop(store: ObjectStore, dataset_id: str, image_id: str, rgb: Image.Image, box: Box,
               target_width: int, target_height: int, mode: str) -> CropResult:
    """Render and upload the crop; the key names what produced it, so writing it twice is harmless."""
    spec = f"v{RENDER_VERSION}:{box.left},{box.top},{box.width},{box.height}:{target_width}x{target_height}"
    key = crop_key(dataset_id, image_id, hashlib.sha256(spec.encode()).hexdigest()[:24])
    rendered, upscaled = render_crop(rgb, box, target_width, target_height)
    if not store.exists(key):
        buffer = io.BytesIO()
        rendered.save(buffer, format="PNG", compress_level=3)
        store.put_bytes(key, buffer.getvalue(), "image/png")
    return CropResult(box, target_width, target_height, mode, upscaled, key)


def upscale_warning(result: CropResult) -> str:
    return (f"crop {result.box.width}x{result.box.height} upscaled to {result.target_width}x{result.target_height}; "
            "a larger original trains better")


def is_crop_warning(text: str) -> bool:
    return text.startswith("crop ")
