"""Internal trust: only Kiln's own services may call an internal service, and only they say
which tenant a call acts for.

The gateway authenticates API keys and calls the internal services with the internal
credential and the tenant in metadata. An internal service believes that tenant only after
the credential checked out: a call without it gets UNAUTHENTICATED, whatever it claims.
The tenant then reaches handlers through call_context, never through their own metadata reads.
"""

from __future__ import annotations

import contextlib
import hmac
import re
from collections.abc import AsyncIterator

import grpc

from services.common.call_context import acting_for
from services.common.errors import ConfigurationError, ServiceError, abort_with, invalid_field, unauthenticated
from services.common.interceptors import OPEN_PREFIXES, AroundCalls
from services.common.settings import InternalAuthSettings

AUTHORIZATION_HEADER = "authorization"
TENANT_HEADER = "x-kiln-tenant"
DEFAULT_TENANT = "default"
_TENANT_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


class InternalAuthError(ConfigurationError):
    """The internal-auth settings can't work (said at start-up, not on the first call)."""


class InternalCredential:
    """What a caller must present. Built from settings; refuses settings that would let anyone in."""

    def __init__(self, settings: InternalAuthSettings) -> None:
        token = settings.token.get_secret_value().encode()
        self._mtls = settings.mode == "mtls"
        if not self._mtls and not token:
            raise InternalAuthError(
                "no internal credential: set KILN_INTERNAL_AUTH__TOKEN to a long random secret shared by every "
                "Kiln service (or KILN_INTERNAL_AUTH__MODE=mtls with server TLS and a client CA)")
        extra = [t.get_secret_value().encode() for t in settings.accepted_tokens]
        if any(not t for t in extra) or (extra and not token):
            raise InternalAuthError("KILN_INTERNAL_AUTH__ACCEPTED_TOKENS: every accepted token must be non-empty, "
                                    "and KILN_INTERNAL_AUTH__TOKEN set beside them")
        # What an `authorization` header may be: the current token, or one accepted during a rotation.
        self._expected = [b"Bearer " + t for t in (token, *extra)] if token else []

    @property
    def requires_client_certificate(self) -> bool:
        return self._mtls

    def check(self, context: grpc.aio.ServicerContext) -> None:
        if self._mtls and not _peer_certified(context):
            raise unauthenticated("internal calls must present a client certificate signed by the internal CA")
        if self._expected:
            presented = _metadata(context, AUTHORIZATION_HEADER)
            if presented is None or not _matches_any(presented.encode(), self._expected):
                raise unauthenticated("this is an internal Kiln service: call it through the gateway, or send "
                                      "the internal credential as `authorization: Bearer <token>`")


def _matches_any(presented: bytes, expected: list[bytes]) -> bool:
    # Every candidate is compared, in constant time each, whichever matches.
    matched = False
    for candidate in expected:
        matched |= hmac.compare_digest(presented, candidate)
    return matched


def internal_auth_interceptor(credential: InternalCredential) -> AroundCalls:
    @contextlib.asynccontextmanager
    async def authenticated(method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        try:
            credential.check(context)
            tenant = tenant_from(context)
        except ServiceError as err:
            await abort_with(context, err)
        with acting_for(tenant):
            yield

    return AroundCalls(authenticated, exempt_prefixes=OPEN_PREFIXES)


def tenant_from(context: grpc.aio.ServicerContext) -> str:
    tenant = _metadata(context, TENANT_HEADER)
    if tenant is None:
        return DEFAULT_TENANT
    if not _TENANT_RE.fullmatch(tenant):
        raise invalid_field(TENANT_HEADER, "tenant ids are 1-63 lowercase letters, digits and dashes")
    return tenant


def _metadata(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return None


def _peer_certified(context: grpc.aio.ServicerContext) -> bool:
    auth = context.auth_context() or {}
    return auth.get("transport_security_type") == [b"ssl"] and bool(context.peer_identities())
