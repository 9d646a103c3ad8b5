"""Request and upload sizes the gateway admits, checked before anything reaches an internal service.

A request message over `max_request_bytes`, an upload that declares or streams more than
`max_upload_bytes`, and a browser upload form asked for a larger file are refused with
RESOURCE_EXHAUSTED and a QuotaFailure naming the limit. A form that is granted admits exactly
the size it declared, which the object store enforces, so the declared size bounds the upload.
Only the two upload methods are decoded here (their size fields); every other request stays
the bytes the client sent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeVar

from google.protobuf.message import Message

from kiln.v1 import dataset_pb2
from services.common.call_context import current_tenant
from services.common.errors import ServiceError, parsed, quota_exceeded
from services.common.malformed import tolerant
from services.common.server import MAX_MESSAGE_BYTES
from services.common.upload_limits import MAX_UPLOAD_CHUNK_BYTES, chunk_too_large

UPLOAD_METHOD = "/kiln.v1.DatasetService/UploadImage"
UPLOAD_URL_METHOD = "/kiln.v1.DatasetService/CreateImageUpload"
# UploadImageRequest.chunk (field 2, length-delimited): a chunk message is this tag, a length
# varint and the bytes.
_CHUNK_TAG = 0x12
# Room for a message's framing beyond its largest field.
_FRAMING_BYTES = 64 * 1024
_M = TypeVar("_M", bound=Message)


class RequestSizes:
    def __init__(self, max_request_bytes: int, max_upload_bytes: int) -> None:
        self.max_request_bytes = max_request_bytes
        self.max_upload_bytes = max_upload_bytes

    @property
    def largest_message_bytes(self) -> int:
        """The transport's ceiling for the gateway's server: room for the largest request these checks
        admit and for a chunk up to twice the largest one, so that an oversize chunk or request still
        gets an answer that names the limit. An upload's whole size is no message's size (it streams in
        chunks), so it plays no part; gRPC refuses a larger message itself (RESOURCE_EXHAUSTED without
        details) before reading it, which keeps every method's memory per message small."""
        return max(MAX_MESSAGE_BYTES, 2 * MAX_UPLOAD_CHUNK_BYTES, self.max_request_bytes) + _FRAMING_BYTES

    def check_request(self, method: str, raw: bytes) -> None:
        """One request message, as it came (raises a ServiceError past a limit)."""
        if len(raw) > self.max_request_bytes:
            raise self._too_large(f"this request is {len(raw)} bytes; requests may be at most "
                                  f"{self.max_request_bytes} bytes", "REQUEST_TOO_LARGE", "max_request_bytes",
                                  self.max_request_bytes)
        if method == UPLOAD_URL_METHOD:
            self._check_declared(_parsed(dataset_pb2.CreateImageUploadRequest, raw).size_bytes)

    def checked_stream(self, method: str, requests: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """A client stream passed on message by message, each checked, and an upload's total."""
        if method == UPLOAD_METHOD:
            return self._checked_upload(requests)
        return self._checked_messages(method, requests)

    async def _checked_messages(self, method: str, requests: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for raw in requests:
            self.check_request(method, raw)
            yield raw

    async def _checked_upload(self, requests: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        first = True
        streamed = 0
        async for raw in requests:
            if first:
                first = False
                self.check_request(UPLOAD_METHOD, raw)
                message = _parsed(dataset_pb2.UploadImageRequest, raw)
                if message.WhichOneof("content") == "metadata":
                    self._check_declared(message.metadata.size_bytes)
                    yield raw
                    continue
            size = _chunk_size(raw)
            if size > MAX_UPLOAD_CHUNK_BYTES:
                raise chunk_too_large(size)
            streamed += size
            if streamed > self.max_upload_bytes:
                raise self._too_large(f"this upload streamed more than {self.max_upload_bytes} bytes, the most one "
                                      "image may have", "UPLOAD_TOO_LARGE", "max_upload_bytes", self.max_upload_bytes)
            yield raw

    def _check_declared(self, size_bytes: int) -> None:
        if size_bytes > self.max_upload_bytes:
            raise self._too_large(f"an image may be at most {self.max_upload_bytes} bytes; this one declares "
                                  f"{size_bytes}", "UPLOAD_TOO_LARGE", "max_upload_bytes", self.max_upload_bytes)

    @staticmethod
    def _too_large(message: str, reason: str, setting: str, limit: int) -> ServiceError:
        return quota_exceeded(message, reason, subject=f"tenant:{current_tenant()}", description=setting,
                              limit=str(limit))


def _chunk_size(raw: bytes) -> int:
    """How many file bytes a serialized chunk message carries at most, read from its framing (the
    bytes themselves are not copied). Fields may come in any order: a message that does not start
    with the chunk counts its whole length, an upper bound that never lets a chunk pass uncounted."""
    if not raw:
        return 0
    if raw[0] != _CHUNK_TAG:
        return len(raw)
    end = 1
    while end < len(raw) and raw[end] & 0x80:  # the length varint's continuation bytes
        end += 1
    return max(0, len(raw) - end - 1)


def _parsed(kind: type[_M], raw: bytes) -> _M:
    """The message, or INVALID_ARGUMENT naming what is wrong with its bytes (as the service would say)."""
    message: _M = parsed(tolerant(kind.FromString, kind)(raw))
    return message
