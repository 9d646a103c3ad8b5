"""Errors as rich gRPC statuses (AIP-193): every error carries an ErrorInfo,
validation errors carry BadRequest field violations.

Servicer code raises `ServiceError`; the `rpc_errors` decorators turn it (and
anything unexpected) into a status, so clients never see a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "kiln.dev"
log = logging.getLogger(__name__)

# A status travels in the response trailers, and gRPC clients drop trailers past
# 8 KiB (soft limit) to 16 KiB (hard limit), leaving the caller a bare
# RESOURCE_EXHAUSTED instead of our error. With these bounds a status needs at
# most about 6 KiB: the BadRequest and the message are each carried once in
# grpc-status-details-bin (base64) and the message again in grpc-message
# (percent-encoded, up to 3 characters per byte).
MAX_VIOLATIONS = 20
MAX_VIOLATION_BYTES = 2048
MAX_MESSAGE_BYTES = 512
MAX_FIELD_BYTES = 128
MAX_DESCRIPTION_BYTES = 256
MAX_METADATA_BYTES = 256


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str
    # Empty: the violation goes out with its error's reason, so no violation a client sees lacks one.
    reason: str = ""


class ConfigurationError(Exception):
    """Settings that can't work, said at start-up with how to fix them (not on the first call)."""


@dataclass
class ServiceError(Exception):
    code: grpc.StatusCode
    message: str
    reason: str
    violations: list[FieldViolation] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    # Seconds after which a retry may succeed (a RetryInfo detail); None: no advice.
    retry_delay: float | None = None
    # (subject, description) of each quota exceeded (a QuotaFailure detail).
    quota: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def to_status(self) -> status_pb2.Status:
        details: list[any_pb2.Any] = []
        metadata = {key: clip(value, MAX_METADATA_BYTES) for key, value in self.metadata.items()}
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=metadata)
        packed = any_pb2.Any()
        packed.Pack(info)
        details.append(packed)
        if self.violations:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description, reason=v.reason or clip(self.reason, MAX_FIELD_BYTES)
                    )
                    for v in shown_violations(self.violations)
                ]
            )
            packed = any_pb2.Any()
            packed.Pack(bad)
            details.append(packed)
        if self.quota:
            failure = error_details_pb2.QuotaFailure(violations=[
                error_details_pb2.QuotaFailure.Violation(subject=clip(subject, MAX_FIELD_BYTES),
                                                         description=clip(description, MAX_DESCRIPTION_BYTES))
                for subject, description in self.quota[:MAX_VIOLATIONS]])
            packed = any_pb2.Any()
            packed.Pack(failure)
            details.append(packed)
        if self.retry_delay is not None:
            retry = error_details_pb2.RetryInfo()
            retry.retry_delay.FromMilliseconds(round(self.retry_delay * 1000))
            packed = any_pb2.Any()
            packed.Pack(retry)
            details.append(packed)
        message = clip(self.message, MAX_MESSAGE_BYTES)
        return status_pb2.Status(code=self.code.value[0], message=message, details=details)


def clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes, marked with an ellipsis when cut."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[:limit - 3].decode(errors="ignore") + "\u2026"


def shown_violations(violations: Sequence[FieldViolation]) -> list[FieldViolation]:
    """The violations a status can carry: the first ones that fit, then one saying how many were left out.

    Clients fix the first problems and retry; listing every bad element of a
    thousand-element field would only make the status too big to deliver."""
    shown: list[FieldViolation] = []
    size = 0
    for v in violations[:MAX_VIOLATIONS]:
        short = FieldViolation(clip(v.field, MAX_FIELD_BYTES), clip(v.description, MAX_DESCRIPTION_BYTES),
                               clip(v.reason, MAX_FIELD_BYTES))
        size += len(short.field.encode()) + len(short.description.encode()) + len(short.reason.encode())
        if size > MAX_VIOLATION_BYTES:
            break
        shown.append(short)
    left_out = len(violations) - len(shown)
    if left_out:
        shown.append(FieldViolation("", f"and {left_out} more problems not listed", "MORE_VIOLATIONS"))
    return shown


@dataclass(frozen=True)
class MalformedRequest:
    """What a tolerant deserializer hands over instead of a message it could not parse."""

    error: str
    fields: tuple[str, ...]

    def to_error(self) -> ServiceError:
        if self.fields:
            return invalid([FieldViolation(f, "not valid UTF-8 text", "INVALID_UTF8") for f in self.fields])
        return invalid([FieldViolation("", f"the request is not valid protobuf: {self.error}", "MALFORMED")])


def parsed(message: Any) -> Any:
    """The message itself, or INVALID_ARGUMENT when it could not be parsed."""
    if isinstance(message, MalformedRequest):
        raise message.to_error()
    return message


def invalid(violations: Iterable[FieldViolation], message: str = "", reason: str = "INVALID_ARGUMENT") -> ServiceError:
    found = list(violations)
    text = message or "; ".join(f"{v.field}: {v.description}" if v.field else v.description
                                for v in shown_violations(found))
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, text, reason, found)


def invalid_field(name: str, description: str, reason: str = "INVALID_ARGUMENT") -> ServiceError:
    return invalid([FieldViolation(name, description, reason)], reason=reason)


def not_found(resource: str, what: str = "resource") -> ServiceError:
    return ServiceError(
        grpc.StatusCode.NOT_FOUND, f"{what} {resource!r} does not exist", "NOT_FOUND", metadata={"resource": resource}
    )


def failed_precondition(message: str, reason: str, violations: Iterable[FieldViolation] = ()) -> ServiceError:
    return ServiceError(grpc.StatusCode.FAILED_PRECONDITION, message, reason, list(violations))


def resource_exhausted(message: str, reason: str, **metadata: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, message, reason, metadata=metadata)


def quota_exceeded(message: str, reason: str, subject: str, description: str, retry_delay: float | None = None,
                   **metadata: str) -> ServiceError:
    """RESOURCE_EXHAUSTED with a QuotaFailure naming what ran out, for whom (and a RetryInfo when
    waiting `retry_delay` seconds will do)."""
    return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, message, reason, metadata=metadata,
                        quota=[(subject, description)], retry_delay=retry_delay)


def already_exists(message: str, reason: str, violations: Iterable[FieldViolation] = ()) -> ServiceError:
    return ServiceError(grpc.StatusCode.ALREADY_EXISTS, message, reason, list(violations))


def unauthenticated(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAUTHENTICATED, message, "UNAUTHENTICATED")


def unavailable(dependency: str, message: str, retry_delay: float = 1.0) -> ServiceError:
    """A dependency is down, refuses connections or did not answer in time: safe to retry later."""
    return ServiceError(grpc.StatusCode.UNAVAILABLE, message, "DEPENDENCY_UNAVAILABLE",
                        metadata={"dependency": dependency}, retry_delay=retry_delay)


def deadline_exceeded(dependency: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"the call's deadline passed while waiting for the {dependency}", "DEADLINE_EXCEEDED",
                        metadata={"dependency": dependency})


def as_service_error(exc: Exception, where: str) -> ServiceError:
    """What to answer for `exc` raised in `where`: itself when it is a ServiceError, the outage it
    reports, or INTERNAL (logged)."""
    return exc if isinstance(exc, ServiceError) else _unexpected(exc, where)


def _unexpected(exc: BaseException, handler: str) -> ServiceError:
    from services.common.outages import outage_error

    outage = outage_error(exc)
    if outage is not None:
        log.warning("dependency unavailable in %s: %s", handler, exc, extra={"fields": outage.metadata})
        return outage
    log.exception("unhandled error in %s", handler)
    return ServiceError(grpc.StatusCode.INTERNAL, "internal error; it has been logged", "INTERNAL")


async def abort_with(context: grpc.aio.ServicerContext, err: ServiceError) -> NoReturn:
    """End the call with `err` as its status (raises, as grpc.aio's abort does)."""
    await context.abort_with_status(rpc_status.to_status(err.to_status()))
    raise AssertionError("abort_with_status returned")


Handler = TypeVar("Handler", bound=Callable[..., Any])


@contextlib.asynccontextmanager
async def _answering_errors(context: grpc.aio.ServicerContext, handler: str) -> AsyncIterator[None]:
    try:
        yield
    except ServiceError as err:
        await abort_with(context, err)
    except (grpc.aio.AbortError, grpc.aio.UsageError):
        raise
    except Exception as exc:
        await abort_with(context, _unexpected(exc, handler))


def unary_errors(fn: Handler) -> Handler:
    """For unary-response handlers (unary-unary and stream-unary)."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with _answering_errors(context, fn.__qualname__):
            return await fn(self, parsed(request), context)

    return wrapper  # type: ignore[return-value]


def stream_errors(fn: Handler) -> Handler:
    """For server-streaming handlers written as async generators."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async with _answering_errors(context, fn.__qualname__):
            async for item in fn(self, parsed(request), context):
                yield item

    return wrapper  # type: ignore[return-value]


Violation = error_details_pb2.BadRequest.FieldViolation


def retry_delay_of(err: grpc.RpcError) -> float | None:
    """Client side: the RetryInfo advice of a failed call, in seconds."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            return float(retry.retry_delay.ToMilliseconds()) / 1000
    return None


def status_details(err: grpc.RpcError) -> tuple[error_details_pb2.ErrorInfo | None, list[Violation]]:
    """Client side: the ErrorInfo and field violations of a failed call."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    info: error_details_pb2.ErrorInfo | None = None
    violations: list[Violation] = []
    if status is None:
        return None, violations
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend(bad.field_violations)
    return info, violations
