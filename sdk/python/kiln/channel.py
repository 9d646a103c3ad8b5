"""The client's connection to the gateway: one keep-alive channel whose every call carries the API
key and a deadline, retries reads the gateway could not answer, and raises KilnError."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from kiln.errors import KilnError

# Past the default 4 MiB: an upload chunk (4 MiB at most) plus its framing, a job with many epochs' previews.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Deadlines for calls made without `timeout=`, in seconds. Server streams that follow work as it
# happens (watching a job, cropping, test generation, reading an artifact) have none: they last as
# long as the work, and keep-alive pings notice a dead connection.
READ_TIMEOUT = 30.0
WRITE_TIMEOUT = 60.0
LONG_WRITE_TIMEOUT = 300.0
_LONG_WRITES = frozenset({"/kiln.v1.DatasetService/UploadImage", "/kiln.v1.TrainerService/CreateTrainingJob",
                          "/kiln.v1.TrainerService/RetrainTrainingJob", "/kiln.v1.DatasetService/CreateSnapshot",
                          "/kiln.v1.TrainerService/CreateModel", "/kiln.v1.DatasetService/DeleteDataset"})
_SERVICES = ("kiln.v1.DatasetService", "kiln.v1.TrainerService", "kiln.v1.WebhookService")


@dataclass(frozen=True)
class Target:
    """Where the gateway listens: "host:port", "grpc://host:port" or "grpcs://host:port" (TLS)."""

    address: str
    tls: bool

    @classmethod
    def parse(cls, url: str) -> Target:
        scheme, separator, rest = url.partition("://")
        if not separator:
            scheme, rest = "grpc", url
        if scheme not in ("grpc", "grpcs") or not rest or "/" in rest.rstrip("/"):
            raise KilnError(grpc.StatusCode.INVALID_ARGUMENT, f"{url!r} is not a gateway address",
                            [("url", "host:port, grpc://host:port or grpcs://host:port (TLS)")],
                            hint="give the gateway's gRPC address, e.g. KILN_URL=localhost:50051")
        return cls(rest.rstrip("/"), scheme == "grpcs")


def _retry_config() -> str:
    """gRPC's own retries for reads (Get*/List* of every public service) that met UNAVAILABLE: the
    gateway restarting or a connection dropped before the call reached it."""
    reads = [{"service": service, "method": method} for service in _SERVICES for method in sorted(_KNOWN_READS)]
    policy = {"maxAttempts": 5, "initialBackoff": "0.2s", "maxBackoff": "3s", "backoffMultiplier": 2,
              "retryableStatusCodes": ["UNAVAILABLE"]}
    return json.dumps({"methodConfig": [{"name": reads, "retryPolicy": policy}]})


# Unary reads of the public services (server streams are resumed by the helpers that use them).
_KNOWN_READS = frozenset({
    "GetDataset", "ListDatasets", "GetImage", "ListImages", "GetImageUrl", "GetTagStatistics", "GetSnapshot",
    "ListSnapshots", "ListBaseModels", "GetBaseModel", "ListPresets", "GetPreset", "GetTrainingJob",
    "ListTrainingJobs", "ListTrainingMetrics", "GetArtifactUrl", "GetModel", "ListModels", "GetWebhookEndpoint",
    "ListWebhookEndpoints", "ListWebhookDeliveries"})


def is_read(method: str) -> bool:
    return method.rsplit("/", 1)[-1] in _KNOWN_READS


def default_timeout(method: str, streaming_response: bool) -> float | None:
    if streaming_response:
        return None
    if is_read(method):
        return READ_TIMEOUT
    return LONG_WRITE_TIMEOUT if method in _LONG_WRITES else WRITE_TIMEOUT


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method: str, timeout: float | None, metadata: Any, credentials: Any,
                 wait_for_ready: bool | None, compression: Any) -> None:
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


class _TranslatedStream:
    """A server stream whose failures surface as KilnError; the rest is the call's."""

    def __init__(self, call: Any, hint: Callable[[grpc.StatusCode], str]) -> None:
        self._call = call
        self._hint = hint

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._call)
        except grpc.RpcError as error:
            raise _translated(error, self._hint) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


def _translated(error: grpc.RpcError, hint: Callable[[grpc.StatusCode], str]) -> KilnError:
    translated = KilnError.from_rpc_error(error)
    translated.hint = translated.hint or hint(translated.code)
    return translated


class KeyInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                     grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds the key and a default deadline to every call; turns failures into KilnError."""

    def __init__(self, api_key: str, target: Target) -> None:
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self._target = target

    def _details(self, details: grpc.ClientCallDetails, streaming_response: bool) -> grpc.ClientCallDetails:
        metadata = tuple(details.metadata or ()) + self._metadata
        timeout = details.timeout if details.timeout is not None else default_timeout(details.method,
                                                                                       streaming_response)
        return _CallDetails(details.method, timeout, metadata, details.credentials, details.wait_for_ready,
                            details.compression)

    def _hint(self, code: grpc.StatusCode) -> str:
        if code == grpc.StatusCode.UNAVAILABLE:
            return (f"the gateway at {self._target.address} could not be reached or is restarting: check that it "
                    "runs and that KILN_URL names it, then try again")
        return ""

    def _unary(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any) -> Any:
        outcome = continuation(self._details(details, False), request)
        try:
            outcome.result()
        except grpc.RpcError as error:
            raise _translated(error, self._hint) from None
        return outcome

    def _stream(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any) -> Any:
        return _TranslatedStream(continuation(self._details(details, True), request), self._hint)

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return self._unary(continuation, client_call_details, request)

    def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return self._unary(continuation, client_call_details, request_iterator)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return self._stream(continuation, client_call_details, request)

    def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return self._stream(continuation, client_call_details, request_iterator)


def open_channel(target: Target, api_key: str) -> tuple[grpc.Channel, grpc.Channel]:
    """(the raw channel, to close; the channel calls go through)."""
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        # A watch can sit quiet for minutes while a job waits in the queue: pings notice a dead
        # connection. Servers refuse pings more often than every 5 minutes by default.
        ("grpc.keepalive_time_ms", 300_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        # A restarted gateway is found again within seconds, not gRPC's default two minutes.
        ("grpc.max_reconnect_backoff_ms", 5_000),
        ("grpc.service_config", _retry_config()),
        ("grpc.enable_retries", 1),
    ]
    if target.tls:
        raw = grpc.secure_channel(target.address, grpc.ssl_channel_credentials(), options=options)
    else:
        raw = grpc.insecure_channel(target.address, options=options)
    return raw, grpc.intercept_channel(raw, KeyInterceptor(api_key, target))
