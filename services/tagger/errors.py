"""Errors the tagger library raises; each message says what went wrong and how to fix it."""

from __future__ import annotations


class TaggerError(Exception):
    """Base class for every error raised on purpose by the tagger library."""

    # A stable machine-readable code for per-image failures (API clients branch on it).
    reason = "TAGGER_ERROR"


class InvalidTaggerFiles(TaggerError):
    """A model or tag list that cannot be used (corrupt, wrong shape, or not matching each other)."""

    reason = "INVALID_TAGGER_FILES"


class TaggerNotFound(TaggerError):
    reason = "TAGGER_NOT_FOUND"


class TaggerAlreadyExists(TaggerError):
    reason = "TAGGER_ALREADY_EXISTS"


class ImageDecodeError(TaggerError):
    """The bytes are not an image we can decode; the rest of a batch is still tagged."""

    reason = "IMAGE_UNDECODABLE"


class ImageUnavailable(TaggerError):
    """The image's bytes could not be fetched (e.g. no such object in the store)."""

    reason = "IMAGE_NOT_FOUND"
