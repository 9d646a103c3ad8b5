"""Verify uploaded bytes and bring them to the one form training reads.

What is accepted is decided by content, never by file name: PNG and JPEG only
(the seed's rule), fully decoded, within byte and pixel limits. What is
stored is 8-bit RGB with EXIF orientation applied; when the upload already is
exactly that, its bytes are kept untouched (no JPEG re-compression),
otherwise the normalised pixels are stored as a lossless PNG.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from services.common.errors import ServiceError, invalid_field

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
_OTHER_FORMATS = (
    (b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"), (b"8BPS", "PSD"), (b"%PDF", "PDF"),
)
EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int
    min_side: int


@dataclass
class CheckedImage:
    content_type: str
    width: int
    height: int
    # What to store as the image's original.
    stored_bytes: bytes
    warnings: list[str] = field(default_factory=list)


def sniff_format(data: bytes) -> str:
    if data.startswith(PNG_MAGIC):
        return "PNG"
    if data.startswith(JPEG_MAGIC):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[4:12] in (b"ftypavif", b"ftypheic", b"ftypmif1", b"ftypheix"):
        return "AVIF/HEIC"
    for magic, name in _OTHER_FORMATS:
        if data.startswith(magic):
            return name
    return "unknown"


def _reject(reason: str, description: str) -> ServiceError:
    return invalid_field("chunk", description, reason=reason)


def check_image(data: bytes, limits: ImageLimits) -> CheckedImage:
    """Raises ServiceError (INVALID_ARGUMENT) with the precise reason."""
    if not data:
        raise _reject("EMPTY_FILE", "the upload is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise _reject("FILE_TOO_LARGE", f"{len(data)} bytes exceeds the {limits.max_bytes}-byte limit")
    detected = sniff_format(data)
    if detected not in ("PNG", "JPEG"):
        raise _reject(
            "UNSUPPORTED_FORMAT",
            f"content is {detected}, not PNG or JPEG; only png/jpg/jpeg images are accepted (convert it first)",
        )
    formats = ["PNG"] if detected == "PNG" else ["JPEG", "MPO"]
    try:
        with warnings.catch_warnings():
            # Pillow only warns below twice its own bomb limit; we want a hard stop at ours.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=formats)
            _check_dimensions(*image.size, limits)
            if detected == "PNG":
                image.verify()  # chunk CRCs and structure, before spending time on inflate
                image = Image.open(io.BytesIO(data), formats=formats)
            if detected == "JPEG" and not _needs_rewrite(image, data):
                # The bytes will be kept as they are, so no pixels are needed at all.
                # At 1/8 scale libjpeg still entropy-decodes every block (truncated or
                # corrupt data fails exactly as in a full decode); only the inverse DCT
                # is skipped, which makes verification several times cheaper.
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except ServiceError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _reject("TOO_MANY_PIXELS", f"image declares too many pixels ({exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _reject("CORRUPT_IMAGE",
                      f"the {detected} data could not be decoded ({exc}); it may be truncated") from exc
    if getattr(image, "is_animated", False) and detected == "PNG":
        raise _reject("ANIMATED_IMAGE", "animated PNGs are not accepted: upload a single frame")
    return _normalise(image, data, detected)


def _needs_rewrite(image: Image.Image, data: bytes) -> bool:
    """Whether the stored bytes must differ from the upload (anything but plain 8-bit RGB, upright)."""
    return image.mode != "RGB" or image.getexif().get(EXIF_ORIENTATION, 1) not in (1, None) or _is_deep_png(data)


def _check_dimensions(width: int, height: int, limits: ImageLimits) -> None:
    if width * height > limits.max_pixels:
        raise _reject(
            "TOO_MANY_PIXELS",
            f"{width}x{height} is {width * height} pixels, over the {limits.max_pixels}-pixel limit; downscale it",
        )
    if min(width, height) < limits.min_side:
        raise _reject(
            "IMAGE_TOO_SMALL", f"{width}x{height} is smaller than {limits.min_side} px on its short side"
        )


def _normalise(image: Image.Image, data: bytes, detected: str) -> CheckedImage:
    notes: list[str] = []
    content_type = "image/png" if detected == "PNG" else "image/jpeg"
    if not _needs_rewrite(image, data):
        # image.size may be a reduced draft; the header's size is the real one.
        real_width, real_height = Image.open(io.BytesIO(data)).size
        return CheckedImage(content_type, real_width, real_height, data, notes)
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    if orientation not in (1, None):
        image = ImageOps.exif_transpose(image)
        notes.append(f"EXIF orientation {orientation} applied")
    rgb = _to_rgb(image, notes)
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG", compress_level=6)
    if detected == "JPEG":
        notes.append("stored as lossless PNG after normalisation")
    return CheckedImage("image/png", rgb.width, rgb.height, buffer.getvalue(), notes)


def _is_deep_png(data: bytes) -> bool:
    """A 16-bit-per-channel PNG opens as 8-bit RGB in Pillow; its bytes must still be rewritten."""
    return data.startswith(PNG_MAGIC) and len(data) > 24 and data[24] > 8


def _to_rgb(image: Image.Image, notes: list[str]) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        notes.append(f"{mode} (16-bit or wider) greyscale scaled to 8 bits")
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if values.max(initial=0) > 255 else 255.0
        grey = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
        notes.append("palette colours expanded to RGB")
        if image.mode == "RGB":
            return image
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        if np.asarray(rgba.getchannel("A")).min() < 255:
            notes.append("transparent areas composited on white")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "CMYK":
        notes.append("CMYK converted to RGB")
    elif mode not in ("L", "1"):
        notes.append(f"{mode} converted to RGB")
    return image.convert("RGB")
