"""The API's limit on one upload chunk, which the gateway and the dataset service both enforce.

dataset.proto states it to clients (UploadImage); tests/dataset/test_stated_limits.py fails when
any document states another. Four MiB is gRPC's default message size, so a chunk fits the
messages every client library sends without tuning."""

from __future__ import annotations

from services.common.errors import ServiceError, invalid_field

MAX_UPLOAD_CHUNK_BYTES = 4 * 1024 * 1024


def chunk_too_large(size: int) -> ServiceError:
    """INVALID_ARGUMENT for a chunk of `size` bytes, over the limit."""
    return invalid_field("chunk", f"a chunk of {size} bytes; send the file in chunks of at most "
                                  f"{MAX_UPLOAD_CHUNK_BYTES} bytes (4 MiB)", "CHUNK_TOO_LARGE")
