"""Which tenant a call acts for.

The gateway authenticates API keys and forwards the tenant in metadata to the
internal services; calls without it (the embedded demo, tests) act for the
`default` tenant. Every record is scoped by tenant, so one tenant can never
read or change another's.
"""

from __future__ import annotations

import re

import grpc

from services.common.errors import invalid_field

TENANT_HEADER = "x-kiln-tenant"
DEFAULT_TENANT = "default"
_TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def tenant_of(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == TENANT_HEADER:
            tenant = value if isinstance(value, str) else value.decode()
            if not _TENANT_RE.match(tenant):
                raise invalid_field(TENANT_HEADER, "tenant ids are 1-63 lowercase letters, digits and dashes")
            return tenant
    return DEFAULT_TENANT
