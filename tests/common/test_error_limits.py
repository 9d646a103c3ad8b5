"""An error status always fits in the trailers gRPC clients accept, however many problems a request has."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from services.common.errors import (
    MAX_MESSAGE_BYTES,
    MAX_VIOLATIONS,
    FieldViolation,
    ServiceError,
    invalid,
    not_found,
)

# gRPC clients start refusing trailers above 8 KiB.
TRAILER_SOFT_LIMIT = 8 * 1024


def trailer_bytes(err: ServiceError) -> int:
    """What the status costs on the wire: grpc-status-details-bin (base64) and grpc-message (percent-encoded)."""
    status = rpc_status.to_status(err.to_status())
    details = dict(status.trailing_metadata)["grpc-status-details-bin"]
    encoded_message = sum(1 if ch.isascii() and ch.isprintable() and ch != "%" else 3 * len(ch.encode())
                          for ch in status.details)
    return (len(details) + 2) // 3 * 4 + encoded_message


def test_a_few_violations_are_all_listed():
    err = invalid([FieldViolation(f"tags[{i}]", "empty tag") for i in range(3)])
    shown = err.to_status()
    assert err.message == "tags[0]: empty tag; tags[1]: empty tag; tags[2]: empty tag"
    assert shown.message == err.message


def test_many_violations_are_cut_with_a_count_of_the_rest():
    err = invalid([FieldViolation(f"tags[{i}]", "empty tag", "INVALID_TAG") for i in range(1000)])
    status = rpc_status.to_status(err.to_status())
    _, bad = err.to_status().details
    request = error_details_pb2.BadRequest()
    bad.Unpack(request)
    fields = [v.field for v in request.field_violations]
    assert fields[:MAX_VIOLATIONS] == [f"tags[{i}]" for i in range(MAX_VIOLATIONS)]
    assert len(fields) == MAX_VIOLATIONS + 1
    assert request.field_violations[-1].reason == "MORE_VIOLATIONS"
    assert str(1000 - MAX_VIOLATIONS) in request.field_violations[-1].description
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert trailer_bytes(err) < TRAILER_SOFT_LIMIT


def test_long_and_non_ascii_texts_still_fit():
    huge = "\u6f22" * 100_000
    err = invalid([FieldViolation(huge, huge, huge) for _ in range(1000)], message=huge)
    assert len(err.to_status().message.encode()) <= MAX_MESSAGE_BYTES
    assert trailer_bytes(err) < TRAILER_SOFT_LIMIT
    missing = not_found("datasets/" + huge)
    assert trailer_bytes(missing) < TRAILER_SOFT_LIMIT


def test_cutting_never_splits_a_character():
    err = ServiceError(grpc.StatusCode.INTERNAL, "\u00e9" * 10_000, "X")
    assert err.to_status().message.endswith("\u2026")
    err.to_status().message.encode()  # valid UTF-8
