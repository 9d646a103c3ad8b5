"""Client file names are labels, never paths: reduce them to a safe base name."""

from __future__ import annotations

import pathlib
import unicodedata

from services.common.errors import invalid_field

MAX_FILENAME_LENGTH = 255


def safe_filename(raw: str, field: str = "metadata.filename") -> str:
    """The base name without directories or control characters.

    A name that is not valid text (an undecodable byte reaches protobuf as a
    replacement character only if the client sent it; protobuf itself refuses
    non-UTF-8 in string fields) or that has nothing left is refused.
    """
    if "\ufffd" in raw:
        raise invalid_field(field, "file name is not valid UTF-8 text")
    name = unicodedata.normalize("NFC", raw).replace("\\", "/")
    name = pathlib.PurePosixPath(name).name
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    if name in ("", ".", ".."):
        raise invalid_field(field, "a file name is required (for example photo.png)")
    if len(name.encode()) > MAX_FILENAME_LENGTH:
        stem, dot, suffix = name.rpartition(".")
        name = (stem[:100] + dot + suffix[:10]) if dot else name[:120]
    return name
