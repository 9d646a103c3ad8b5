"""What a client is told when the call to an internal service failed in the channel rather than in
the service. Kiln's services put google.rpc details on every error they answer; an error without
them came from the channel (the service down or too slow), and its text would name internal
addresses. The client is told which service instead, and to retry."""

from __future__ import annotations

import re

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from services.common.errors import ServiceError, deadline_exceeded, unavailable


def dependency_name(service: ServiceDescriptor) -> str:
    """How errors name the internal service behind a public one: "dataset service" for DatasetService."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", service.name).lower()


def channel_failure(code: grpc.StatusCode, dependency: str) -> ServiceError | None:
    """The answer for an error without details, or None when its code and text may go out as they are."""
    if code == grpc.StatusCode.UNAVAILABLE:
        return unavailable(dependency, f"the {dependency} is unavailable; retry later")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return deadline_exceeded(dependency)
    return None
