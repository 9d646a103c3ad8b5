"""Every public call names its API key (`authorization: Bearer kiln_…`) and acts for that key's
tenant, under that key's limits. Missing, malformed, unknown and revoked keys get one answer,
word for word, so it says nothing about which keys exist. Health and reflection stay open, as on every Kiln service."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from services.common.call_context import acting_for
from services.common.errors import ServiceError, abort_with, unauthenticated
from services.common.interceptors import OPEN_PREFIXES, AroundCalls
from services.gateway.key_verifier import KeyVerifier
from services.gateway.limits import KeyLimits

REFUSED = ("a valid API key is required: send it as `authorization: Bearer kiln_…` (an operator creates one "
           "with `python -m services.gateway keys create --tenant … --name …`)")


def bearer_key(context: grpc.aio.ServicerContext) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == "authorization":
            return key_of_authorization(value if isinstance(value, str) else value.decode(errors="replace"))
    return None


def key_of_authorization(value: str) -> str | None:
    """The key of an `authorization: Bearer <key>` value (gRPC metadata or an HTTP header)."""
    scheme, _, key = value.partition(" ")
    return key.strip() if scheme.lower() == "bearer" else None


def api_key_interceptor(verifier: KeyVerifier, limits: KeyLimits) -> AroundCalls:
    @contextlib.asynccontextmanager
    async def authenticated(method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        presented = bearer_key(context)
        try:
            verified = await verifier.verify(presented) if presented else None
            if verified is None:
                raise unauthenticated(REFUSED)
            release = limits.admit(verified.key_id, method)
        except ServiceError as error:
            await abort_with(context, error)
        try:
            with acting_for(verified.tenant):
                yield
        finally:
            release()

    return AroundCalls(authenticated, exempt_prefixes=OPEN_PREFIXES)
