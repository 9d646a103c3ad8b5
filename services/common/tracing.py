"""OpenTelemetry spans across services, off unless an OTLP endpoint is set.

Server and client interceptors carry the trace context in gRPC metadata (W3C traceparent), so
one request can be followed from the gateway through every service it touches; background
rounds open spans of their own, which the calls they make continue.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from services.common.settings import TracingSettings


class Tracing:
    def __init__(self, settings: TracingSettings, service: str) -> None:
        self._provider: TracerProvider | None = None
        if settings.otlp_endpoint:
            self._provider = TracerProvider(resource=Resource.create({"service.name": f"kiln-{service}"}),
                                            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)))
            exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint, insecure=settings.otlp_insecure)
            self._provider.add_span_processor(BatchSpanProcessor(exporter))

    @property
    def enabled(self) -> bool:
        return self._provider is not None

    def server_interceptors(self) -> list[Any]:
        return [aio_server_interceptor(tracer_provider=self._provider)] if self._provider else []

    def client_interceptors(self) -> list[Any]:
        return list(aio_client_interceptors(tracer_provider=self._provider)) if self._provider else []

    def tracer(self, name: str) -> trace.Tracer:
        if self._provider is None:
            return trace.NoOpTracer()
        return self._provider.get_tracer(name)

    def flush(self) -> None:
        if self._provider is not None:
            self._provider.force_flush(5_000)

    def close(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()
