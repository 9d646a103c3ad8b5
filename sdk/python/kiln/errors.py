"""KilnError: what every failed SDK call raises, with the status's details unpacked and a line on
how to fix it, instead of a bare grpc.RpcError."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from kiln.v1 import trainer_pb2

_CODES = {code.value[0]: code for code in grpc.StatusCode}

# What to do about each kind of failure, when the server's message alone doesn't say.
_ADVICE = {
    grpc.StatusCode.UNAUTHENTICATED: "pass a live API key (Client(api_key=…) or KILN_API_KEY=kiln_…); an operator "
                                     "creates one with `kiln keys create --tenant … --name …`",
    grpc.StatusCode.INVALID_ARGUMENT: "fix the fields listed and send the request again",
    grpc.StatusCode.NOT_FOUND: "check the name: nothing by that name is visible to this API key",
    grpc.StatusCode.ALREADY_EXISTS: "a request_id is reused for another request, or the name is taken: "
                                    "use a new request_id or another name",
    grpc.StatusCode.FAILED_PRECONDITION: "the resource is not in a state that allows this yet",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "a limit was reached: wait for running work to finish, or ask an operator "
                                        "to raise the limit",
    grpc.StatusCode.UNAVAILABLE: "the gateway could not be reached or is restarting: check KILN_URL and try again",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the call ran past its deadline: pass a longer timeout= or try again",
    grpc.StatusCode.OUT_OF_RANGE: "the value is outside what the resource has (for a watch: start from the job's "
                                  "oldest_event_seq)",
    grpc.StatusCode.PERMISSION_DENIED: "this API key may not do that",
    grpc.StatusCode.DATA_LOSS: "the data arrived damaged: try again",
}


@dataclass(frozen=True)
class QuotaViolation:
    subject: str
    description: str


@dataclass
class KilnError(Exception):
    """A failed call: its status code and message, the fields to fix, the quota that ran out and when
    a retry may succeed."""

    code: grpc.StatusCode
    message: str
    # (field, description) of each problem with the request (a BadRequest detail).
    violations: list[tuple[str, str]] = field(default_factory=list)
    # What ran out, for whom (a QuotaFailure detail).
    quota: list[QuotaViolation] = field(default_factory=list)
    # Seconds after which a retry may succeed (a RetryInfo detail).
    retry_delay: float | None = None
    # The ErrorInfo reason (e.g. "NOT_FOUND", "QUOTA_EXCEEDED") and its metadata.
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    # How to fix it, when the caller knows better than the code's general advice.
    hint: str = ""

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @property
    def advice(self) -> str:
        if self.hint:
            return self.hint
        if self.retry_delay is not None:
            return f"retry in {self.retry_delay:g} s"
        return _ADVICE.get(self.code, "")

    def __str__(self) -> str:
        lines = [f"{self.code.name}: {self.message}"]
        lines += [f"  - {name}: {description}" if name else f"  - {description}"
                  for name, description in self.violations]
        lines += [f"  - {q.subject}: {q.description}" for q in self.quota]
        if self.advice:
            lines.append(f"How to fix: {self.advice}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        """For machine-readable output."""
        return {"code": self.code.name, "message": self.message, "reason": self.reason,
                "violations": [{"field": f, "description": d} for f, d in self.violations],
                "quota": [{"subject": q.subject, "description": q.description} for q in self.quota],
                "retry_delay": self.retry_delay, "advice": self.advice}

    @classmethod
    def from_status(cls, status: status_pb2.Status, hint: str = "") -> KilnError:
        """From a google.rpc.Status (a failed call's, or a failed job's `error`)."""
        error = cls(_CODES.get(status.code, grpc.StatusCode.UNKNOWN), status.message, hint=hint)
        for detail in status.details:
            bad, failure = error_details_pb2.BadRequest(), error_details_pb2.QuotaFailure()
            retry, info = error_details_pb2.RetryInfo(), error_details_pb2.ErrorInfo()
            # Unpack is true only where the detail is of that type.
            if detail.Unpack(bad):
                error.violations += [(v.field, v.description) for v in bad.field_violations]
            elif detail.Unpack(failure):
                error.quota += [QuotaViolation(v.subject, v.description) for v in failure.violations]
            elif detail.Unpack(retry):
                error.retry_delay = retry.retry_delay.ToMilliseconds() / 1000
            elif detail.Unpack(info):
                error.reason, error.metadata = info.reason, dict(info.metadata)
        return error

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError, hint: str = "") -> KilnError:
        call: grpc.Call = error  # type: ignore[assignment]  # every RpcError a call raises is also its Call
        try:
            status = rpc_status.from_call(call)
        except ValueError:  # details that contradict the code and message: keep the plain status
            status = None
        if status is not None:
            return cls.from_status(status, hint)
        code = call.code() if callable(getattr(call, "code", None)) else None
        details = call.details() if callable(getattr(call, "details", None)) else None
        return cls(code or grpc.StatusCode.UNKNOWN, details or str(error), hint=hint)


@dataclass
class JobFailed(KilnError):
    """A training job ended FAILED: the code, message and details are the job's error."""

    job: trainer_pb2.TrainingJob | None = None
