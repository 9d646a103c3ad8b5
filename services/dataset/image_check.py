"""Verify uploaded bytes and bring them to the one form training reads.

What is accepted is decided by content, never by file name: PNG and JPEG only,
fully decoded, within byte and pixel limits. Whatever the
bytes, the answer is an accepted image or a named rejection.

What is stored is the image alone (stored_form.py: nothing after its end marker,
metadata within a limit), as 8-bit sRGB with EXIF orientation applied and no
colour profile. When the file already is exactly that, its bytes are kept
(no JPEG re-compression); otherwise the normalised pixels are stored as a
lossless PNG. The warnings say what was changed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageCms, ImageOps

from services.common.errors import ServiceError, invalid_field
from services.dataset import jpeg_layout, png_layout
from services.dataset.colour_profiles import Profile, is_srgb, read_profile, to_srgb
from services.dataset.stored_form import TooManyPieces, Trimmed, trim, without_profile

log = logging.getLogger(__name__)

PNG_MAGIC = png_layout.SIGNATURE
JPEG_MAGIC = b"\xff\xd8\xff"
_OTHER_FORMATS = (
    (b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"), (b"8BPS", "PSD"), (b"%PDF", "PDF"),
)
EXIF_ORIENTATION = 0x0112
_VALID_ORIENTATIONS = range(1, 9)
# Orientations that turn or mirror the stored pixels (1 is upright).
_TURNS = range(2, 9)
# What Pillow raises on bytes it can't make sense of. Beyond the documented OSError / SyntaxError /
# ValueError, its parsers let through what malformed headers and EXIF blocks make of their arithmetic.
_UNDECODABLE = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError, TypeError,
                ZeroDivisionError, OverflowError, zlib.error, ImageCms.PyCMSError)
_LAYOUTS = {"PNG": png_layout, "JPEG": jpeg_layout}


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
    # What to store as the image's original: the upload object itself when nothing changed.
    stored_bytes: bytes
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Decoded:
    """The opened image and what the file says about how its pixels are meant."""

    image: Image.Image
    width: int
    height: int
    orientation: int
    bit_depth: int
    # The file carries a colour profile (applied, or removed as sRGB, or ignored as unusable).
    has_profile: bool
    # It can be cut out of the file (else the pixels are stored anew, without it).
    profile_removable: bool
    # The profile to convert the pixels with; None when there is none or it changes nothing.
    convert_with: Profile | None
    # What became of a profile that isn't converted with.
    profile_note: str | None


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
    piece_name = "chunk" if detected == "PNG" else "segment"
    try:
        layout = _LAYOUTS[detected].parse(data)
    except TooManyPieces as exc:
        raise _reject("CORRUPT_IMAGE", f"the {detected} file has too many {piece_name}s ({exc}); "
                      "no encoder writes so many") from exc
    trimmed = trim(data, layout)
    return _normalise(_decode(trimmed, detected, limits), trimmed, detected)


@contextlib.contextmanager
def _decoding(detected: str) -> Iterator[None]:
    """Whatever the decoder makes of the bytes ends as a named rejection. Only calls into Pillow run
    under it: what it catches from Kiln's own code would hide a fault as the uploader's."""
    try:
        with warnings.catch_warnings():
            # Pillow only warns below twice its own bomb limit; we want a hard stop at ours.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # What Pillow says about a file's quirks (an EXIF tag past the end) is the uploader's business.
            warnings.simplefilter("ignore", UserWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _reject("TOO_MANY_PIXELS", f"image declares too many pixels ({exc})") from exc
    except _UNDECODABLE as exc:
        if not isinstance(exc, (OSError, SyntaxError, ValueError, EOFError)):
            log.warning("undecodable %s upload: %s", detected, exc, exc_info=True)
        raise _reject("CORRUPT_IMAGE",
                      f"the {detected} data could not be decoded ({type(exc).__name__}: {exc}); "
                      "it may be truncated or damaged") from exc


def _decode(trimmed: Trimmed, detected: str, limits: ImageLimits) -> _Decoded:
    data = trimmed.data
    with _decoding(detected):
        image = Image.open(io.BytesIO(data), formats=[detected])
    width, height = image.size
    _check_dimensions(width, height, limits)
    if detected == "PNG":
        with _decoding(detected):
            image.verify()  # chunk CRCs and structure, before spending time on inflate
            image = Image.open(io.BytesIO(data), formats=[detected])
            animated = getattr(image, "is_animated", False)
        if animated:
            raise _reject("ANIMATED_IMAGE", "animated PNGs are not accepted: upload a single frame")
    with _decoding(detected):
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    has_profile = "icc_profile" in image.info
    convert_with, profile_note = (_profile_use(image.info["icc_profile"], image.mode, detected) if has_profile
                                  else (None, None))
    decoded = _Decoded(image, width, height, orientation=orientation,
                       bit_depth=data[24] if detected == "PNG" else 8, has_profile=has_profile,
                       profile_removable=trimmed.parsed,
                       convert_with=convert_with, profile_note=profile_note)
    # The bytes will be kept as they are, so no pixels are needed at all.
    # At 1/8 scale libjpeg still entropy-decodes every block (truncated or
    # corrupt data fails exactly as in a full decode); only the inverse DCT
    # is skipped, which makes verification several times cheaper.
    kept_as_is = detected == "JPEG" and not _needs_rewrite(decoded)
    with _decoding(detected):
        if kept_as_is:
            image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
        image.load()
    return decoded


def _profile_use(icc: bytes | None, mode: str, detected: str) -> tuple[Profile | None, str | None]:
    """The profile to convert `mode` pixels with, or why none is."""
    profile = read_profile(icc) if icc else None
    if profile is None:
        return None, "colour profile unreadable; ignored (colours taken as sRGB)"
    if profile.mode != _colour_family(mode):
        return None, (f"colour profile '{profile.description}' ({profile.mode}) does not fit the image's {mode} "
                      "pixels; ignored")
    with _decoding(detected):  # applies the file's profile to a probe
        srgb = is_srgb(profile)
    if srgb:
        return None, f"colour profile '{profile.description}' is sRGB; removed"
    return profile, None


def _colour_family(mode: str) -> str:
    """The mode of the colour space an image of `mode` is in, as colour profiles name them."""
    if mode in ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N"):
        return "L"
    return "CMYK" if mode == "CMYK" else "RGB"


def _needs_rewrite(decoded: _Decoded) -> bool:
    """Whether the stored pixels must differ from the file's (anything but plain 8-bit sRGB, upright)."""
    return (decoded.image.mode != "RGB" or decoded.orientation in _TURNS or decoded.bit_depth > 8
            or decoded.convert_with is not None or (decoded.has_profile and not decoded.profile_removable))


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


def _normalise(decoded: _Decoded, trimmed: Trimmed, detected: str) -> CheckedImage:
    notes = trimmed.warnings("chunk" if detected == "PNG" else "segment")
    if decoded.orientation not in _VALID_ORIENTATIONS:
        notes.append(f"EXIF orientation {decoded.orientation} is not a valid value (1-8); ignored")
    if decoded.profile_note is not None:
        notes.append(decoded.profile_note)
    if not _needs_rewrite(decoded):
        stored = trimmed.data
        if decoded.has_profile:
            stored = without_profile(stored, _LAYOUTS[detected].parse)
        content_type = "image/png" if detected == "PNG" else "image/jpeg"
        return CheckedImage(content_type, decoded.width, decoded.height, stored, notes)
    image = decoded.image
    if decoded.orientation in _TURNS:
        with _decoding(detected):
            image = ImageOps.exif_transpose(image)
        notes.append(f"EXIF orientation {decoded.orientation} applied")
    rgb = _in_srgb(_flattened(image, decoded.bit_depth, notes), decoded.convert_with, notes, detected)
    rgb.info = {}  # nothing of the file's metadata (a profile above all) goes into the rewritten one
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG", compress_level=6)
    if detected == "JPEG":
        notes.append("stored as lossless PNG after normalisation")
    return CheckedImage("image/png", rgb.width, rgb.height, buffer.getvalue(), notes)


def _flattened(image: Image.Image, bit_depth: int, notes: list[str]) -> Image.Image:
    """8 bits per channel, no alpha (composited on white), in the colour space of the file: L, RGB or CMYK."""
    mode = image.mode
    if mode in ("RGB", "L", "CMYK"):
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # The file's bit depth is the scale: a dark 16-bit image is not an 8-bit one.
        notes.append(f"{bit_depth}-bit greyscale scaled to 8 bits")
        # Integers, in place: rounds as v * 255 / top + 0.5 would, with one 4-byte array rather than
        # several 8-byte ones (a 64-megapixel image would otherwise take gigabytes).
        top = 2 ** bit_depth - 1
        scaled = np.asarray(image).astype(np.uint32)
        np.minimum(scaled, top, out=scaled)
        scaled *= 255
        scaled += top // 2
        scaled //= top
        return Image.fromarray(scaled.astype(np.uint8), "L")
    if mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
        notes.append("palette colours expanded to RGB")
        if image.mode == "RGB":
            return image
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        grey = mode in ("LA", "La")
        rgba = image.convert("RGBA")
        if np.asarray(rgba.getchannel("A")).min() < 255:
            notes.append("transparent areas composited on white")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat = Image.alpha_composite(background, rgba).convert("RGB")
        return flat.convert("L") if grey else flat
    if mode == "1":
        return image.convert("L")
    notes.append(f"{mode} converted to RGB")
    return image.convert("RGB")


def _in_srgb(image: Image.Image, profile: Profile | None, notes: list[str], detected: str) -> Image.Image:
    if profile is not None and image.mode == profile.mode:
        notes.append(f"colour profile '{profile.description}' converted to sRGB")
        with _decoding(detected):
            return to_srgb(image, profile)
    if image.mode == "CMYK":
        notes.append("CMYK converted to RGB")
    return image.convert("RGB")
