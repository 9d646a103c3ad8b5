"""Client file names are labels, never paths."""

from __future__ import annotations

import unicodedata

from services.common.errors import invalid_field

MAX_FILENAME_BYTES = 255


def safe_filename(raw: str, field: str = "metadata.filename") -> str:
    """The name as given (NFC-normalised), or INVALID_ARGUMENT.

    A name carrying directories ("../x.png", "a/b.png", "C:\\x.png") is refused
    rather than silently cut: the client is sending something it should not.
    (A name that is not UTF-8 never gets here: the deserializer answers it.)
    """
    name = unicodedata.normalize("NFC", raw).strip()
    if not name:
        raise invalid_field(field, "a file name is required (for example photo.png)")
    if "/" in name or "\\" in name or name in (".", "..") or (len(name) > 1 and name[1] == ":"):
        raise invalid_field(field, "give a file name without directories (for example photo.png)", "PATH_IN_FILENAME")
    if not name.isprintable():
        raise invalid_field(field, "file names cannot contain control characters", "INVALID_FILENAME")
    if len(name.encode()) > MAX_FILENAME_BYTES:
        raise invalid_field(field, f"at most {MAX_FILENAME_BYTES} bytes", "INVALID_FILENAME")
    return name
