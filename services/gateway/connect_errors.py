"""gRPC statuses as Connect errors: the same code, message and google.rpc details (ErrorInfo,
BadRequest, QuotaFailure, RetryInfo), so a Connect client reads what a gRPC client reads."""

from __future__ import annotations

import grpc
from connectrpc.code import Code
from connectrpc.errors import ConnectError, ErrorDetail
from google.rpc import status_pb2
from grpc_status import rpc_status
from protobuf.wkt import Any as ConnectAny

from services.common.errors import ServiceError
from services.gateway.upstream_errors import channel_failure

# Connect names the codes as gRPC does, lower-cased, but for one spelling: CANCELLED is "canceled".
_CODES: dict[grpc.StatusCode, Code] = {
    status: Code.CANCELED if status is grpc.StatusCode.CANCELLED else Code(status.name.lower())
    for status in grpc.StatusCode if status is not grpc.StatusCode.OK}
_BY_NUMBER = {status.value[0]: code for status, code in _CODES.items()}
_NAMES = {code: status.name for status, code in _CODES.items()}


def grpc_code_name(code: Code) -> str:
    """The gRPC name of a Connect code (CANCELLED for "canceled")."""
    return _NAMES.get(code, "UNKNOWN")


def from_status(status: status_pb2.Status) -> ConnectError:
    # connectrpc carries details as its own runtime's Any (protobuf-py); the bytes are the same.
    details = [ErrorDetail(ConnectAny(type_url=detail.type_url, value=detail.value)) for detail in status.details]
    return ConnectError(_BY_NUMBER.get(status.code, Code.UNKNOWN), status.message, details)


def from_rpc_error(error: grpc.aio.AioRpcError, dependency: str) -> ConnectError:
    """An internal service's error, with the details of its status trailer (upstream_errors.py says
    what a failure of the channel itself becomes)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is not None:
        return from_status(status)
    failure = channel_failure(error.code(), dependency)
    if failure is not None:
        return from_service_error(failure)
    return ConnectError(_CODES.get(error.code(), Code.UNKNOWN), error.details() or "")


def from_service_error(error: ServiceError) -> ConnectError:
    return from_status(error.to_status())
