"""Errors the tagger library raises; each message says what went wrong and how to fix it."""

from __future__ import annotations


class TaggerError(Exception):
    """Base class for every error raised on purpose by the tagger library."""


class InvalidTaggerFiles(TaggerError):
    """A model or tag list that cannot be used (corrupt, wrong shape, or not matching each other)."""


class TaggerNotFound(TaggerError):
    pass


class TaggerAlreadyExists(TaggerError):
    pass


class ImageDecodeError(TaggerError):
    """The bytes are not an image we can decode; the rest of a batch is still tagged."""
