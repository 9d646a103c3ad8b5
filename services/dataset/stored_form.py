"""What of an upload's file is worth storing: the image and what its pixels need, and a little metadata.

Both PNG and JPEG files are a run of pieces (chunks, segments) up to an end marker. Anything after
the end marker is not part of the image (a ZIP behind a PNG makes a polyglot), and metadata piled into
the pieces (megabytes of text, a tool's whole workflow) is no use to training: the pieces the pixels
need are always kept, the others in file order while their total stays within METADATA_LIMIT.
Nothing is decoded here and pixels never change; a file whose structure can't be followed is left as
it is for the decoder to judge.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# Enough for a camera's EXIF (itself at most 64 KiB) or a generator's prompt and settings.
METADATA_LIMIT = 64 * 1024
# More pieces than any encoder writes (libpng cuts pixel data into 8 KiB chunks: about 6,400 in a 50 MiB
# PNG). Following more would cost time and memory for every few bytes of the file, so such a file is refused.
MAX_PIECES = 65536


class TooManyPieces(Exception):
    """The file is cut into more than MAX_PIECES pieces."""


@dataclass(frozen=True, slots=True)
class Piece:
    start: int
    end: int
    # Pixels depend on it (it is always kept).
    needed: bool
    # What it costs against the metadata limit: compressed text counts at its inflated size.
    cost: int
    # Carries a colour profile.
    profile: bool = False
    # Dropped whatever its size: it describes what is never stored (the images after a JPEG's end), or
    # repeats what a file says once (a second colour profile or EXIF block, which decoders may not read).
    stale: bool = False


@dataclass(frozen=True)
class Layout:
    """A file cut into pieces: data[:head] is the signature, data[end:] lies after the end marker."""

    head: int
    pieces: list[Piece]
    end: int
    # Bytes inflated to learn what compressed metadata costs.
    inflated: int = 0


class Pieces(list[Piece]):
    """The pieces found so far, refusing to grow past MAX_PIECES."""

    def add(self, piece: Piece) -> None:
        if len(self) >= MAX_PIECES:
            raise TooManyPieces(f"more than {MAX_PIECES} pieces")
        self.append(piece)


class MetadataBudget:
    """Which pieces are kept, in file order: all that the pixels need, and others while they fit."""

    def __init__(self) -> None:
        self.left = METADATA_LIMIT

    def keeps(self, piece: Piece) -> bool:
        if piece.needed:
            return True
        if piece.stale or piece.cost > self.left:
            return False
        self.left -= piece.cost
        return True


@dataclass(frozen=True)
class Trimmed:
    data: bytes
    # The file's structure was followed to its end marker, so its pieces can be told apart.
    parsed: bool = True
    tail_bytes: int = 0
    dropped: int = 0
    dropped_bytes: int = 0

    def warnings(self, piece_name: str) -> list[str]:
        notes = []
        if self.tail_bytes:
            notes.append(f"{self.tail_bytes} bytes after the end of the image removed")
        if self.dropped:
            plural = "" if self.dropped == 1 else "s"
            notes.append(f"{self.dropped} metadata {piece_name}{plural} ({_size(self.dropped_bytes)}) dropped: "
                         f"at most {_size(METADATA_LIMIT)} of metadata is kept")
        return notes


def trim(data: bytes, layout: Layout | None) -> Trimmed:
    """The file without its tail and with metadata cut to the limit; `data` itself when nothing changes."""
    if layout is None:
        return Trimmed(data, parsed=False)
    kept: list[Piece] = []
    budget = MetadataBudget()
    dropped = dropped_bytes = 0
    for piece in layout.pieces:
        if budget.keeps(piece):
            kept.append(piece)
        else:
            dropped += 1
            dropped_bytes += piece.cost
    tail = len(data) - layout.end
    if not dropped and not tail:
        return Trimmed(data)
    return Trimmed(_joined(data, layout.head, kept), True, tail, dropped, dropped_bytes)


def without_profile(data: bytes, parse: Callable[[bytes], Layout | None]) -> bytes:
    """The file without the pieces that carry its colour profile."""
    layout = parse(data)
    if layout is None or not any(p.profile for p in layout.pieces):
        return data
    return _joined(data, layout.head, [p for p in layout.pieces if not p.profile]) + data[layout.end:]


def _joined(data: bytes, head: int, pieces: list[Piece]) -> bytes:
    view = memoryview(data)
    return b"".join([view[:head], *(view[p.start:p.end] for p in pieces)])


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} bytes"
    if count < 1024 * 1024:
        return f"{count / 1024:.0f} KiB"
    return f"{count / (1024 * 1024):.1f} MiB"
