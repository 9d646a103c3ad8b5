"""A PNG file's chunks, and which of them the pixels need (see stored_form.py)."""

from __future__ import annotations

import struct
import zlib

from services.dataset.stored_form import METADATA_LIMIT, Layout, MetadataBudget, Piece, Pieces

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Ancillary chunks that decide what the pixels look like: transparency, colour, orientation (eXIf), and
# the frames of an animation (which is refused, and must stay recognisable as one).
_NEEDED_ANCILLARY = {b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"sBIT", b"cICP", b"mDCV", b"cLLI",
                     b"acTL", b"fcTL", b"fdAT"}
_MAX_CHUNK = 2**31 - 1
# Pillow's own bound on an inflated profile (PngImagePlugin.MAX_TEXT_CHUNK): a larger one can't be read.
MAX_PROFILE = 1024 * 1024
# What all the compressed text of one file may inflate to while its cost is learned. Each chunk inflates
# no further than the metadata that is still free, so a few large ones fit; past this, compressed text is
# dropped unread (thousands of small bombs would otherwise cost a metadata limit each).
INFLATE_LIMIT = 16 * METADATA_LIMIT


def parse(data: bytes) -> Layout | None:
    """The chunks up to and including IEND, or None when the file doesn't follow the format that far.
    Raises TooManyPieces past stored_form.MAX_PIECES."""
    if not data.startswith(SIGNATURE):
        return None
    reader = _ChunkReader(data)
    at = len(SIGNATURE)
    while at + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, at)
        end = at + 12 + length
        if length > _MAX_CHUNK or end > len(data):
            return None
        reader.read(kind, at, end)
        at = end
        if kind == b"IEND":
            return Layout(len(SIGNATURE), reader.pieces, at, reader.inflated)
    return None


class _ChunkReader:
    """Makes each chunk a piece, inflating compressed text no further than what is left of the budgets."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self.pieces = Pieces()
        self.inflated = 0
        self._text_inflated = 0
        self._budget = MetadataBudget()
        self._seen: set[bytes] = set()

    def read(self, kind: bytes, start: int, end: int) -> None:
        piece = self._piece(kind, self._data[start + 8:end - 4], start, end)
        self._seen.add(kind)
        self._budget.keeps(piece)
        self.pieces.add(piece)

    def _piece(self, kind: bytes, body: memoryview, start: int, end: int) -> Piece:
        critical = not kind[0] & 0x20
        if kind in (b"iCCP", b"eXIf") and kind in self._seen:
            # Only one is allowed; decoders differ on which of several they read.
            return Piece(start, end, needed=False, cost=end - start, stale=True, profile=kind == b"iCCP")
        if kind == b"iCCP":
            inflated = _inflated_size(body, _iccp_stream(body), MAX_PROFILE)
            self.inflated += inflated
            return Piece(start, end, needed=inflated <= MAX_PROFILE, cost=inflated, profile=True)
        if kind == b"eXIf":
            # Says which way is up; a camera's EXIF is at most 64 KiB, a larger block is metadata like any.
            needed = len(body) <= METADATA_LIMIT
            return Piece(start, end, needed=needed, cost=0 if needed else end - start)
        if critical or kind in _NEEDED_ANCILLARY:
            return Piece(start, end, needed=True, cost=0)
        # Framing counts too, so that no chunk is free however small.
        cost = end - start
        stream = {b"zTXt": _ztxt_stream, b"iTXt": _itxt_stream}.get(kind)
        offset = None if stream is None or cost > self._budget.left else stream(body)
        if offset is None:  # not compressed, or dropped whatever it inflates to
            return Piece(start, end, needed=False, cost=cost)
        room = INFLATE_LIMIT - self._text_inflated
        if room <= 0:
            return Piece(start, end, needed=False, cost=self._budget.left + 1)
        limit = min(self._budget.left, room)
        inflated = _inflated_size(body, offset, limit)
        self._text_inflated += inflated
        self.inflated += inflated
        # Cut short by the inflate limit rather than the budget: dropped all the same.
        over = inflated > limit and limit < self._budget.left
        return Piece(start, end, needed=False, cost=self._budget.left + 1 if over else max(cost, inflated))


def _inflated_size(body: memoryview, offset: int | None, limit: int) -> int:
    """How large the zlib stream at `offset` inflates, counted no further than limit + 1 (a bomb
    costs no more memory or time than that); a stream that doesn't inflate counts at its length."""
    if offset is None:
        return len(body)
    try:
        return len(zlib.decompressobj().decompress(body[offset:], limit + 1))
    except zlib.error:
        return len(body)


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
