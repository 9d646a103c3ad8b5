"""A JPEG file's segments, and which of them the pixels need (see stored_form.py)."""

from __future__ import annotations

import re
import struct

from services.dataset.stored_form import Layout, Piece, Pieces

_SOI, _EOI, _SOS, _COM = 0xD8, 0xD9, 0xDA, 0xFE
_APP0, _APP1, _APP2, _APP14, _APP15 = 0xE0, 0xE1, 0xE2, 0xEE, 0xEF
# Markers without a length: TEM and the restart markers.
_STANDALONE = {0x01, *range(0xD0, 0xD8)}
# Where entropy-coded data ends: a 0xFF that is neither a stuffed zero, a restart marker nor fill.
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_FILL = re.compile(rb"\xff+")


def parse(data: bytes) -> Layout | None:
    """The segments up to and including EOI, or None when the file doesn't follow the format that far.
    Raises TooManyPieces past stored_form.MAX_PIECES."""
    if not data.startswith(b"\xff\xd8"):
        return None
    pieces = Pieces()
    seen_exif = False
    at = 2
    while at < len(data):
        if data[at] != 0xFF:
            # Stray bytes between segments, which decoders skip: nothing the pixels need.
            marker_at = data.find(b"\xff", at)
            if marker_at < 0:
                return None
            pieces.add(Piece(at, marker_at, needed=False, cost=marker_at - at))
            at = marker_at
            continue
        fill = _FILL.match(data, at)
        # Past the fill bytes, found at C speed however many there are.
        marker_at = fill.end() - 1 if fill else at
        if marker_at + 1 >= len(data):
            return None
        marker = data[marker_at + 1]
        if marker == _EOI:
            pieces.add(Piece(at, marker_at + 2, needed=True, cost=0))
            return Layout(2, pieces, marker_at + 2)
        if marker in _STANDALONE:
            pieces.add(Piece(at, marker_at + 2, needed=True, cost=0))
            at = marker_at + 2
            continue
        if marker in (0x00, _SOI) or marker_at + 4 > len(data):
            return None
        (length,) = struct.unpack_from(">H", data, marker_at + 2)
        end = marker_at + 2 + length
        if length < 2 or end > len(data):
            return None
        if marker == _SOS:
            scan_end = _SCAN_END.search(data, end)
            if scan_end is None:
                return None
            pieces.add(Piece(at, scan_end.start(), needed=True, cost=0))
            at = scan_end.start()
            continue
        body = data[marker_at + 4:min(end, marker_at + 4 + 32)]
        exif = marker == _APP1 and body.startswith(b"Exif\0\0")
        pieces.add(_piece(marker, body, at, end, first_exif=exif and not seen_exif))
        seen_exif = seen_exif or exif
        at = end
    return None


def _piece(marker: int, body: bytes, start: int, end: int, first_exif: bool) -> Piece:
    if not (_APP0 <= marker <= _APP15 or marker == _COM):
        return Piece(start, end, needed=True, cost=0)  # frame, tables, restart interval...
    if marker == _APP2 and body.startswith(b"ICC_PROFILE\0"):
        return Piece(start, end, needed=True, cost=0, profile=True)
    if marker == _APP2 and body.startswith(b"MPF\0"):
        # It indexes the images after this one's end, which are never stored.
        return Piece(start, end, needed=False, cost=end - start, stale=True)
    # JFIF and Adobe say how the components make colours; the EXIF that Pillow reads says which way is up.
    needed = ((marker == _APP0 and body.startswith(b"JFIF\0")) or (marker == _APP14 and body.startswith(b"Adobe"))
              or first_exif)
    return Piece(start, end, needed=needed, cost=0 if needed else end - start)
