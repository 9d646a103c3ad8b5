"""How a servicer is added to a server (hosting.py runs the server)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

# The transport's ceiling on one message, past which gRPC itself refuses it without details. Above
# the upload chunk limit (upload_limits.py), so the services answer an oversize chunk themselves.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class ServiceBinding:
    """One servicer and how to add it to a server."""

    full_name: str
    register: Callable[[grpc.aio.Server], None]


def tolerant_binding(pb2_module: Any, service: str, add_to_server: Callable[[Any, Any], None],
                     servicer: Any) -> ServiceBinding:
    """Bind a generated servicer so that requests it cannot parse get INVALID_ARGUMENT (see malformed.py)."""
    from services.common.malformed import register_tolerant, request_types_of

    descriptor = pb2_module.DESCRIPTOR.services_by_name[service]
    return ServiceBinding(descriptor.full_name, lambda server: register_tolerant(
        server, add_to_server, servicer, request_types_of(descriptor, pb2_module)))
