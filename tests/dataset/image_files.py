"""Unusual and malformed image files, built byte by byte where Pillow would not write them."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# RGB -> XYZ (D65) of the wide-gamut spaces and of sRGB, and the Bradford cone response that
# adapts them to the D50 an ICC profile connects through.
ADOBE_RGB_D65 = np.array([[0.5767309, 0.1855540, 0.1881852], [0.2973769, 0.6273491, 0.0752741],
                          [0.0270343, 0.0706872, 0.9911085]])
DISPLAY_P3_D65 = np.array([[0.4865709, 0.2656677, 0.1982173], [0.2289746, 0.6917385, 0.0792869],
                           [0.0000000, 0.0451134, 1.0439444]])
SRGB_D65 = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                     [0.0193339, 0.1191920, 0.9503041]])
_BRADFORD = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]])
_D65 = np.array([0.95047, 1.0, 1.08883])
_D50 = np.array([0.96422, 1.0, 0.82521])
ADOBE_GAMMA = 563 / 256


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, body) of each chunk of a well-formed PNG."""
    chunks, at = [], len(PNG_SIGNATURE)
    while at < len(data):
        (length,) = struct.unpack(">I", data[at:at + 4])
        chunks.append((data[at + 4:at + 8], data[at + 8:at + 8 + length]))
        at += 12 + length
    return chunks


def with_png_chunks(png: bytes, extra: list[bytes]) -> bytes:
    """The PNG with chunks put right after its header (where tools write their metadata)."""
    header_end = len(PNG_SIGNATURE) + 25
    return png[:header_end] + b"".join(extra) + png[header_end:]


def ztxt(keyword: bytes, compressed: bytes) -> bytes:
    return png_chunk(b"zTXt", keyword + b"\x00\x00" + compressed)


def zlib_of_zeros(size: int) -> bytes:
    """Deflate of `size` zero bytes, made a block at a time (a bomb needs no bomb-sized buffer)."""
    packer = zlib.compressobj(9)
    block = bytes(1024 * 1024)
    parts = [packer.compress(block) for _ in range(size // len(block))]
    return b"".join(parts) + packer.compress(bytes(size % len(block))) + packer.flush()


def zip_archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("payload.txt", "a polyglot's second file " * 40)
    return buffer.getvalue()


def jpeg_segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def with_jpeg_segments(jpeg: bytes, extra: list[bytes]) -> bytes:
    """The JPEG with segments put right after its start marker."""
    return jpeg[:2] + b"".join(extra) + jpeg[2:]


def jpeg_segment_markers(data: bytes) -> list[int]:
    """The markers of a JPEG's header segments, up to its first scan."""
    markers, at = [], 2
    while data[at + 1] != 0xDA:
        markers.append(data[at + 1])
        at += 2 + struct.unpack(">H", data[at + 2:at + 4])[0]
    return markers


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# --- colour profiles: ICC v2 matrix/TRC profiles, as cameras and editors embed them ---

def _adapted_to_d50(rgb_to_xyz: np.ndarray) -> np.ndarray:
    cone = (_BRADFORD @ _D50) / (_BRADFORD @ _D65)
    return np.linalg.inv(_BRADFORD) @ np.diag(cone) @ _BRADFORD @ rgb_to_xyz


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz_tag(values: np.ndarray) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(_s15(v) for v in values)


def gamma_curve(gamma: float) -> bytes:
    return b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256))


def srgb_curve() -> bytes:
    """The sRGB transfer function as an ICC parametric curve (type 3)."""
    params = (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045)
    return b"para\0\0\0\0" + struct.pack(">HH", 3, 0) + b"".join(_s15(p) for p in params)


def _text_description(text: str) -> bytes:
    ascii_text = text.encode() + b"\0"
    return (b"desc\0\0\0\0" + struct.pack(">I", len(ascii_text)) + ascii_text + struct.pack(">IIHB", 0, 0, 0, 0)
            + bytes(67))


def _profile_bytes(space: bytes, tags: list[tuple[bytes, bytes]]) -> bytes:
    """An ICC v2 display profile of `space` (b"RGB " or b"GRAY") with the tags."""
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for signature, tag in tags:
        tag += bytes(-len(tag) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(tag))
        body += tag
    header = (struct.pack(">I", offset + len(body)) + b"none" + bytes([2, 0x10, 0, 0]) + b"mntr" + space + b"XYZ "
              + bytes(12) + b"acsp" + b"APPL" + bytes(4) + b"none" + b"none" + bytes(8) + bytes(4)
              + _xyz_tag(_D50)[8:] + b"none" + bytes(44))
    return header + struct.pack(">I", len(tags)) + table + body


def icc_profile(description: str, rgb_to_xyz_d65: np.ndarray, curve: bytes) -> bytes:
    colorants = _adapted_to_d50(rgb_to_xyz_d65)
    return _profile_bytes(b"RGB ", [
        (b"desc", _text_description(description)), (b"cprt", b"text\0\0\0\0none\0"), (b"wtpt", _xyz_tag(_D50)),
        (b"rXYZ", _xyz_tag(colorants[:, 0])), (b"gXYZ", _xyz_tag(colorants[:, 1])),
        (b"bXYZ", _xyz_tag(colorants[:, 2])), (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)])


def grey_profile(description: str, gamma: float) -> bytes:
    return _profile_bytes(b"GRAY", [(b"desc", _text_description(description)), (b"cprt", b"text\0\0\0\0none\0"),
                                    (b"wtpt", _xyz_tag(_D50)), (b"kTRC", gamma_curve(gamma))])


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    linear = np.clip(linear, 0.0, 1.0)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055) * 255


def srgb_decode(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, np.float64) / 255
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


@dataclass(frozen=True)
class WideGamut:
    """A colour space wider than sRGB: its profile, and what its colours are in sRGB by plain arithmetic."""

    description: str
    rgb_to_xyz_d65: np.ndarray
    curve: bytes
    decode: Callable[[np.ndarray], np.ndarray]

    def profile(self) -> bytes:
        return icc_profile(self.description, self.rgb_to_xyz_d65, self.curve)

    def in_srgb(self, colours: np.ndarray) -> np.ndarray:
        linear = self.decode(np.asarray(colours, np.float64).reshape(-1, 3))
        return srgb_encode((np.linalg.inv(SRGB_D65) @ self.rgb_to_xyz_d65 @ linear.T).T)


ADOBE_RGB = WideGamut("Adobe RGB (1998) compatible", ADOBE_RGB_D65, gamma_curve(ADOBE_GAMMA),
                      lambda v: (v / 255) ** ADOBE_GAMMA)
DISPLAY_P3 = WideGamut("Display P3 compatible", DISPLAY_P3_D65, srgb_curve(), srgb_decode)
