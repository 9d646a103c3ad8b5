"""Channels from one Kiln service (or the demo, or a test) to an internal service: every call
carries the internal credential, over TLS when the settings say so."""

from __future__ import annotations

import ipaddress
import pathlib
from collections.abc import Sequence
from typing import Any

import grpc

from services.common.errors import ConfigurationError
from services.common.internal_auth import AUTHORIZATION_HEADER, TENANT_HEADER
from services.common.settings import InternalAuthSettings

Metadata = tuple[tuple[str, str], ...]


def tenant_metadata(tenant: str) -> Metadata:
    """Per-call metadata saying which tenant a call acts for (the gateway's job)."""
    return ((TENANT_HEADER, tenant),)


# Calls go to every address a target resolves to, in turn, so one replica that dies (or a name
# with several records) costs only the calls in flight to it; the default sticks to the first.
ROUND_ROBIN: tuple[tuple[str, Any], ...] = (("grpc.lb_policy_name", "round_robin"),)


def replicas_target(addresses: str) -> str:
    """A channel target for one `host:port`, or several IP `address:port`s separated by commas
    (the replicas of one service, all IPv4 or all IPv6); any other target (`dns:///…`) is passed
    through. Over TLS a list needs the name the replicas' certificate is for (`tls_name_option`)."""
    parts = [part.strip() for part in addresses.split(",") if part.strip()]
    if len(parts) < 2:
        return addresses.strip()
    families: set[int] = set()
    for part in parts:
        host, _, port = part.rpartition(":")
        try:
            families.add(ipaddress.ip_address(host.strip("[]")).version)
        except ValueError:
            families.add(0)
        if not port.isdigit() or 0 in families:
            raise ConfigurationError(f"{part!r} in {addresses!r}: a list of replicas is IP address:port pairs; for "
                                     "host names use one name that resolves to all of them (dns:///name:port)")
    if len(families) > 1:
        raise ConfigurationError(f"{addresses!r} mixes IPv4 and IPv6 addresses: list one kind")
    return f"{'ipv6' if 6 in families else 'ipv4'}:{','.join(parts)}"


def tls_name_option(name: str) -> tuple[tuple[str, Any], ...]:
    """Channel options checking the servers' certificate against `name` ("": the target's host)."""
    return (("grpc.ssl_target_name_override", name),) if name else ()


def credential_metadata(settings: InternalAuthSettings) -> Metadata:
    token = settings.token.get_secret_value()
    return ((AUTHORIZATION_HEADER, f"Bearer {token}"),) if token else ()


def internal_aio_channel(address: str, settings: InternalAuthSettings,
                         interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
                         options: Sequence[tuple[str, Any]] = (), credential_on_calls: bool = True
                         ) -> grpc.aio.Channel:
    """`credential_on_calls=False`: the caller puts `credential_metadata(settings)` on each call itself."""
    credential = _aio_credential_interceptors(credential_metadata(settings)) if credential_on_calls else []
    every = [*credential, *interceptors]
    credentials = _channel_credentials(settings)
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=list(options), interceptors=every)
    return grpc.aio.secure_channel(address, credentials, options=list(options), interceptors=every)


def internal_channel(address: str, settings: InternalAuthSettings) -> grpc.Channel:
    """A blocking channel (tests, tools)."""
    credentials = _channel_credentials(settings)
    channel = (grpc.insecure_channel(address) if credentials is None
               else grpc.secure_channel(address, credentials))
    return grpc.intercept_channel(channel, _SyncCredentialInterceptor(credential_metadata(settings)))


def _channel_credentials(settings: InternalAuthSettings) -> grpc.ChannelCredentials | None:
    if settings.mode != "mtls":
        return None
    tls = settings.client_tls
    return grpc.ssl_channel_credentials(
        root_certificates=_read(settings.server_ca_file), private_key=_read(tls.key_file),
        certificate_chain=_read(tls.cert_file))


def _read(path: pathlib.Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


def _with_metadata(details: Any, extra: Metadata) -> Any:
    if not extra:
        return details
    metadata = [*(details.metadata or ()), *extra]
    return details._replace(metadata=metadata)


class _AioUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, metadata: Metadata) -> None:
        self._metadata = metadata

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(_with_metadata(client_call_details, self._metadata), request)


class _AioUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, metadata: Metadata) -> None:
        self._metadata = metadata

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(_with_metadata(client_call_details, self._metadata), request)


class _AioStreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, metadata: Metadata) -> None:
        self._metadata = metadata

    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any,
                                     request_iterator: Any) -> Any:
        return await continuation(_with_metadata(client_call_details, self._metadata), request_iterator)


class _AioStreamStream(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, metadata: Metadata) -> None:
        self._metadata = metadata

    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any,
                                      request_iterator: Any) -> Any:
        return await continuation(_with_metadata(client_call_details, self._metadata), request_iterator)


def _aio_credential_interceptors(metadata: Metadata) -> list[grpc.aio.ClientInterceptor]:
    """One interceptor per call kind: grpc.aio files each interceptor under the first kind it is
    an instance of, so one object implementing all four would only ever see unary calls."""
    return [_AioUnaryUnary(metadata), _AioUnaryStream(metadata), _AioStreamUnary(metadata),
            _AioStreamStream(metadata)]


class _SyncCredentialInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                                 grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def __init__(self, metadata: Metadata) -> None:
        self._metadata = metadata

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(_with_metadata(client_call_details, self._metadata), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(_with_metadata(client_call_details, self._metadata), request)

    def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return continuation(_with_metadata(client_call_details, self._metadata), request_iterator)

    def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return continuation(_with_metadata(client_call_details, self._metadata), request_iterator)
