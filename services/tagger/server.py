"""Run the tagger service: `python -m services.tagger serve` (settings from KILN_… variables)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from kiln.v1 import tagger_pb2, tagger_pb2_grpc
from services.common.body_detector import BodyDetector
from services.common.hosting import RunningServer, run_service
from services.common.internal_auth import InternalCredential
from services.common.logs import configure_logging
from services.common.objectstore import ObjectStore
from services.common.observability import Observability
from services.common.outages import OBJECT_STORE
from services.common.pagination import PageTokens
from services.common.process import serve_process
from services.common.readiness import Probe
from services.common.server import ServiceBinding, tolerant_binding
from services.tagger.registry import TaggerRegistry
from services.tagger.servicer import TaggerServicer
from services.tagger.settings import TaggerSettings

log = logging.getLogger(__name__)


@dataclass
class TaggerComponents:
    settings: TaggerSettings
    store: ObjectStore | None
    servicer: TaggerServicer
    credential: InternalCredential
    observability: Observability

    def binding(self) -> ServiceBinding:
        return tolerant_binding(tagger_pb2, "TaggerService", tagger_pb2_grpc.add_TaggerServiceServicer_to_server,
                                self.servicer)

    def probes(self) -> list[Probe]:
        return [Probe(OBJECT_STORE, self.store.check_reachable)] if self.store is not None else []

    async def load_preferred(self) -> None:
        """Load the preferred model now rather than on the first upload (a ViT takes seconds)."""
        try:
            await asyncio.to_thread(lambda: self.servicer.load_engine(self.servicer.preferred_tagger()))
        except Exception:
            log.exception("could not preload the preferred tagger; requests will report why")

    def close(self) -> None:
        self.servicer.close()
        self.observability.close()


async def build_tagger(settings: TaggerSettings, store: ObjectStore | None,
                       observability: Observability | None = None) -> TaggerComponents:
    """Without a store, images can only be sent inline."""
    credential = InternalCredential(settings.internal_auth)
    observability = observability or Observability.for_service("tagger", settings)
    policy = settings.moderation_policy()
    detector = await asyncio.to_thread(BodyDetector)
    registry = TaggerRegistry(settings.taggers_dir(), settings.tagger_runtime)
    servicer = TaggerServicer(registry, store, settings, detector, policy, PageTokens.from_settings(settings),
                              observability.metrics)
    return TaggerComponents(settings, store, servicer, credential, observability)


@dataclass
class TaggerService:
    server: RunningServer
    components: TaggerComponents

    @property
    def address(self) -> str:
        return self.server.address

    @property
    def servicer(self) -> TaggerServicer:
        return self.components.servicer


@contextlib.asynccontextmanager
async def running_tagger_service(settings: TaggerSettings, store: ObjectStore | None,
                                 observability: Observability | None = None) -> AsyncIterator[TaggerService]:
    """Start the service on settings.server (port 0 picks a free port) and stop it on exit."""
    components = await build_tagger(settings, store, observability)
    warm_up = asyncio.create_task(components.load_preferred())
    try:
        async with run_service([components.binding()], settings=settings.server,
                               interceptors=components.observability.internal_interceptors(components.credential),
                               probes=components.probes(), metrics=components.observability.metrics,
                               metrics_settings=settings.metrics,
                               require_client_certificate=components.credential.requires_client_certificate
                               ) as server:
            yield TaggerService(server, components)
    finally:
        warm_up.cancel()
        components.close()


async def serve(settings: TaggerSettings, stop: asyncio.Event) -> None:
    from services.common.storage_runtime import open_store

    # The tagger reads images the dataset service stored, so it only talks to a configured store;
    # an embedded one of its own would always be empty.
    handle = await asyncio.to_thread(open_store, settings.s3, settings.data_dir) if settings.s3.endpoint else None
    try:
        async with running_tagger_service(settings, handle.store if handle else None) as service:
            log.info("tagger service ready", extra={"fields": {"address": service.address,
                                                               "metrics": service.server.metrics_url}})
            await stop.wait()
    finally:
        if handle is not None:
            handle.close()


def main() -> None:
    settings = TaggerSettings()
    configure_logging(settings.log_level, settings.json_logs)
    serve_process(lambda stop: serve(settings, stop), settings.server.shutdown_grace)
