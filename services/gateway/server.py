"""The gateway: the public API, over gRPC and over the Connect protocol on HTTP/1.1 (browsers,
curl), in one process. It authenticates API keys and relays each public service (datasets,
training) to the internal service behind it, acting for the key's tenant."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc

from kiln.v1 import dataset_pb2, trainer_pb2, webhooks_pb2
from services.common.database import create_engine
from services.common.errors import ConfigurationError
from services.common.hosting import Background, Periodic, RunningServer, run_service
from services.common.idempotency import IdempotencyKeys
from services.common.interceptors import deadline_interceptor
from services.common.internal_client import ROUND_ROBIN, credential_metadata, internal_aio_channel, replicas_target
from services.common.logs import configure_logging
from services.common.migrations import SchemaMigrations
from services.common.observability import Observability
from services.common.process import drain_time, serve_process
from services.common.readiness import Probe, database_probe
from services.common.server import MAX_MESSAGE_BYTES, ServiceBinding
from services.common.transactions import Transactions
from services.gateway import schema
from services.gateway.asgi import ASGIApp
from services.gateway.connect_app import CallMetrics, KeyCheck, connect_application
from services.gateway.cors import CorsPolicy, with_cors
from services.gateway.http_app import gateway_http_app
from services.gateway.http_server import HttpServer, start_http
from services.gateway.key_auth import api_key_interceptor
from services.gateway.key_verifier import KeyVerifier
from services.gateway.limits import KeyLimits
from services.gateway.relay import relay_handler
from services.gateway.request_sizes import RequestSizes
from services.gateway.settings import GatewaySettings
from services.gateway.upstream import Upstream
from services.gateway.web_files import content_security_policy, load_web_files, web_files_app

MIGRATIONS = pathlib.Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version_gateway"
SCHEMA = SchemaMigrations("gateway", MIGRATIONS, VERSION_TABLE)
# The public services and the setting naming the internal service behind each.
PUBLIC_SERVICES = (
    (dataset_pb2.DESCRIPTOR.services_by_name["DatasetService"], "dataset_address"),
    (trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"], "trainer_address"),
    (webhooks_pb2.DESCRIPTOR.services_by_name["WebhookService"], "trainer_address"),
)
# Each internal service may run as several replicas (a list of addresses, or a name resolving to all).
_CHANNEL_OPTIONS = (("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES), *ROUND_ROBIN)
log = logging.getLogger(__name__)


@dataclass
class GatewayComponents:
    settings: GatewaySettings
    transactions: Transactions
    keys: KeyVerifier
    limits: KeyLimits
    sizes: RequestSizes
    upstreams: dict[str, Upstream]
    observability: Observability

    def bindings(self) -> list[ServiceBinding]:
        return [ServiceBinding(service.full_name, _registers(relay_handler(service, self.upstreams[address_setting],
                                                                         self.sizes)))
                for service, address_setting in PUBLIC_SERVICES]

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        return self.observability.server_interceptors(deadline_interceptor(),
                                                      api_key_interceptor(self.keys, self.limits))

    def http_app(self, serving: Callable[[], bool]) -> ASGIApp:
        """Every public service over Connect, behind CORS; `serving` answers /healthz."""
        interceptors = (CallMetrics(self.observability.metrics), KeyCheck(self.keys, self.limits))
        services = {service.full_name: connect_application(service, self.upstreams[address_setting], interceptors,
                                                           self.sizes)
                    for service, address_setting in PUBLIC_SERVICES}
        streamed_requests = {f"/{service.full_name}/{method.name}" for service, _ in PUBLIC_SERVICES
                             for method in service.methods if method.client_streaming}
        web_root = self.settings.web_root()
        web = (web_files_app(load_web_files(web_root), content_security_policy(self.settings.web_store_origins))
               if web_root is not None else None)
        app = gateway_http_app(services, streamed_requests, self.settings.max_request_bytes, serving, web)
        return with_cors(app, CorsPolicy(self.settings.cors_allowed_origins))

    def background(self) -> list[Background]:
        return [Periodic("key use", self.settings.key_use_write_seconds, self.keys.record_uses)]

    def probes(self) -> list[Probe]:
        return [database_probe(self.transactions.engine)]

    async def close(self) -> None:
        try:
            await self.keys.record_uses()
        except Exception:  # the last uses are a courtesy: shutting down goes on
            log.exception("could not write the keys' last uses")
        for upstream in self.upstreams.values():
            await upstream.channel.close()
        self.transactions.close()
        self.transactions.engine.dispose()
        self.observability.close()


def _registers(handler: grpc.GenericRpcHandler) -> Callable[[grpc.aio.Server], None]:
    def register(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((handler,))

    return register


def open_database(settings: GatewaySettings) -> Transactions:
    """The gateway's database, migrated to the newest schema (or checked to be at it, see
    migrate_on_start; blocking)."""
    engine = create_engine(settings.database_url(), timeout=settings.database_timeout_seconds,
                           connect_timeout=settings.database_connect_timeout_seconds,
                           pool_size=settings.database_pool_size)
    SCHEMA.prepare(engine, settings.migrate_on_start)
    return Transactions(engine, IdempotencyKeys(schema.request_ids), None, pool_size=settings.database_pool_size,
                        database_timeout=settings.database_timeout_seconds, name="gateway")


async def build_gateway(settings: GatewaySettings, observability: Observability | None = None) -> GatewayComponents:
    missing = [name for name in dict.fromkeys(name for _, name in PUBLIC_SERVICES) if not getattr(settings, name)]
    if missing:
        raise ConfigurationError("the gateway needs the internal services' addresses: set "
                                 + ", ".join(f"KILN_{name.upper()}=host:port" for name in missing))
    observability = observability or Observability.for_service("gateway", settings)
    transactions = await asyncio.to_thread(open_database, settings)
    credential = credential_metadata(settings.internal_auth)
    upstreams = {name: Upstream(internal_aio_channel(replicas_target(getattr(settings, name)), settings.internal_auth,
                                                     interceptors=observability.tracing.client_interceptors(),
                                                     options=_CHANNEL_OPTIONS, credential_on_calls=False),
                                credential)
                for name in dict.fromkeys(name for _, name in PUBLIC_SERVICES)}  # one per internal service
    limits = KeyLimits(settings.key_requests_per_second, settings.key_request_burst,
                       settings.max_watch_streams_per_key)
    sizes = RequestSizes(settings.max_request_bytes, settings.max_upload_bytes)
    return GatewayComponents(settings, transactions, KeyVerifier(transactions, settings.key_cache_seconds), limits,
                             sizes, upstreams, observability)


@dataclass
class GatewayService:
    server: RunningServer
    http: HttpServer
    components: GatewayComponents

    @property
    def address(self) -> str:
        """The gRPC side's host:port."""
        return self.server.address

    @property
    def http_address(self) -> str:
        """The HTTP (Connect) side's host:port."""
        return self.http.address


@contextlib.asynccontextmanager
async def running_gateway(settings: GatewaySettings,
                          observability: Observability | None = None) -> AsyncIterator[GatewayService]:
    """Start the gateway, gRPC on settings.server and HTTP on settings.http (port 0 picks a free
    port), and stop it on exit."""
    components = await build_gateway(settings, observability)
    try:
        async with run_service(components.bindings(), settings=settings.server,
                               interceptors=components.interceptors(), background=components.background(),
                               probes=components.probes(), metrics=components.observability.metrics,
                               metrics_settings=settings.metrics,
                               max_receive_message_bytes=components.sizes.largest_message_bytes) as server:
            http = await start_http(components.http_app(lambda: server.serving), settings.http.host,
                                    settings.http.port)
            try:
                yield GatewayService(server, http, components)
            finally:
                # Both sides drain at once, within the one grace period (health says NOT_SERVING on both
                # from the start); run_service's own stop then finds the gRPC side stopped.
                grace = settings.server.shutdown_grace
                await asyncio.gather(http.stop(drain_time(grace)), server.stop(grace))
    finally:
        await components.close()


async def serve(settings: GatewaySettings, stop: asyncio.Event) -> None:
    async with running_gateway(settings) as service:
        log.info("gateway ready", extra={"fields": {"address": service.address, "http": service.http_address,
                                                    "metrics": service.server.metrics_url}})
        await stop.wait()


def main() -> None:
    settings = GatewaySettings()
    configure_logging(settings.log_level, settings.json_logs)
    serve_process(lambda stop: serve(settings, stop), settings.server.shutdown_grace)
