"""A PNG file's chunks, and which of them the pixels need (see stored_form.py)."""

from __future__ import annotations

import struct
import zlib

from services.dataset.stored_form import METADATA_LIMIT, Layout, Piece

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Ancillary chunks that decide what the pixels look like: transparency, colour, and the frames of an
# animation (which is refused, and must stay recognisable as one).
_NEEDED_ANCILLARY = {b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"cICP", b"mDCV", b"cLLI",
                     b"acTL", b"fcTL", b"fdAT"}
_MAX_CHUNK = 2**31 - 1
# Pillow's own bound on an inflated profile (PngImagePlugin.MAX_TEXT_CHUNK): a larger one can't be read.
MAX_PROFILE = 1024 * 1024


def parse(data: bytes) -> Layout | None:
    """The chunks up to and including IEND, or None when the file doesn't follow the format that far."""
    if not data.startswith(SIGNATURE):
        return None
    pieces: list[Piece] = []
    at = len(SIGNATURE)
    while at + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, at)
        end = at + 12 + length
        if length > _MAX_CHUNK or end > len(data):
            return None
        pieces.append(_piece(kind, data, at, end))
        at = end
        if kind == b"IEND":
            return Layout(len(SIGNATURE), pieces, at)
    return None


def _piece(kind: bytes, data: bytes, start: int, end: int) -> Piece:
    body = memoryview(data)[start + 8:end - 4]
    critical = not kind[0] & 0x20
    if kind == b"iCCP":
        inflated = _inflated_size(body, _iccp_stream(body), MAX_PROFILE)
        return Piece(start, end, needed=inflated <= MAX_PROFILE, cost=inflated, profile=True)
    if critical or kind in _NEEDED_ANCILLARY:
        return Piece(start, end, needed=True, cost=0)
    stream = {b"zTXt": _ztxt_stream, b"iTXt": _itxt_stream}.get(kind)
    cost = len(body) if stream is None else max(len(body), _inflated_size(body, stream(body), METADATA_LIMIT))
    return Piece(start, end, needed=False, cost=cost)


def _iccp_stream(body: memoryview) -> int | None:
    name_end = bytes(body[:80]).find(b"\0")
    return None if name_end < 0 else name_end + 2


def _ztxt_stream(body: memoryview) -> int | None:
    keyword_end = bytes(body[:80]).find(b"\0")
    return None if keyword_end < 0 else keyword_end + 2


def _itxt_stream(body: memoryview) -> int | None:
    """keyword NUL, compressed?, method, language NUL, translated keyword NUL, text."""
    raw = bytes(body[:METADATA_LIMIT])
    keyword_end = raw.find(b"\0")
    if keyword_end < 0 or keyword_end + 2 >= len(raw) or raw[keyword_end + 1] != 1:
        return None  # plain text: its size is its length
    language_end = raw.find(b"\0", keyword_end + 3)
    translated_end = raw.find(b"\0", language_end + 1) if language_end >= 0 else -1
    return None if translated_end < 0 else translated_end + 1


def _inflated_size(body: memoryview, offset: int | None, limit: int) -> int:
    """How large the zlib stream at `offset` inflates, counted no further than limit + 1 (a bomb
    costs no more memory or time than that); a stream that doesn't inflate counts at its length."""
    if offset is None:
        return len(body)
    try:
        return len(zlib.decompressobj().decompress(body[offset:], limit + 1))
    except zlib.error:
        return len(body)
