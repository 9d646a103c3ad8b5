"""An internal service as the gateway calls it: its channel, and the metadata every call carries."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from services.common.call_context import current_tenant
from services.common.internal_client import Metadata, tenant_metadata


@dataclass(frozen=True)
class Upstream:
    channel: grpc.aio.Channel
    # The internal credential goes on each call rather than through a channel interceptor: grpc.aio
    # runs an intercepted call as one more task, a measurable share of a relayed call's time.
    credential: Metadata

    def metadata(self) -> Metadata:
        """The credential and the tenant the call acts for: nothing the client sent goes through."""
        return (*self.credential, *tenant_metadata(current_tenant()))
