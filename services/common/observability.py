"""Metrics and traces of one service, and the server interceptors every internal service runs."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from services.common.interceptors import AroundCalls, chained, deadline_interceptor
from services.common.internal_auth import InternalCredential, internal_auth_interceptor
from services.common.metrics import ServiceMetrics
from services.common.settings import CommonSettings
from services.common.tracing import Tracing


@dataclass(frozen=True)
class Observability:
    metrics: ServiceMetrics
    tracing: Tracing

    @classmethod
    def for_service(cls, service: str, settings: CommonSettings) -> Observability:
        return cls(ServiceMetrics(service), Tracing(settings.tracing, service))

    def internal_interceptors(self, credential: InternalCredential) -> list[grpc.aio.ServerInterceptor]:
        """Outermost first: metrics see every call, refused ones too; traces continue the caller's;
        the deadline and the tenant are set before the handler runs."""
        return self.server_interceptors(deadline_interceptor(), internal_auth_interceptor(credential))

    def server_interceptors(self, *inner: AroundCalls) -> list[grpc.aio.ServerInterceptor]:
        """Metrics outermost, then traces, then `inner` in order; without traces, all in one wrapper
        (`chained`)."""
        traced = self.tracing.server_interceptors()
        if traced:
            return [self.metrics.interceptor(), *traced, chained(*inner)]
        return [chained(self.metrics.interceptor(), *inner)]

    def close(self) -> None:
        self.tracing.close()
