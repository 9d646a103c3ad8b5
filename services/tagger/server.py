"""Run the tagger service: `python -m services.tagger serve` (settings from KILN_… variables)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from kiln.v1 import tagger_pb2, tagger_pb2_grpc
from services.common.body_detector import BodyDetector
from services.common.logs import configure_logging
from services.common.objectstore import ObjectStore
from services.common.server import (
    RunningService,
    ServiceBinding,
    start_server,
    tolerant_binding,
    wait_for_termination_signal,
)
from services.tagger.registry import TaggerRegistry
from services.tagger.servicer import TaggerServicer
from services.tagger.settings import TaggerSettings

log = logging.getLogger(__name__)


TaggerService = RunningService[TaggerServicer]


def binding(servicer: TaggerServicer) -> ServiceBinding:
    return tolerant_binding(tagger_pb2, "TaggerService", tagger_pb2_grpc.add_TaggerServiceServicer_to_server, servicer)


@contextlib.asynccontextmanager
async def running_tagger_service(settings: TaggerSettings, store: ObjectStore | None) -> AsyncIterator[TaggerService]:
    """Start the service on settings.server (port 0 picks a free port) and stop it on exit.
    Without a store, images can only be sent inline."""
    policy = settings.moderation_policy()
    detector = await asyncio.to_thread(BodyDetector)
    registry = TaggerRegistry(settings.taggers_dir(), settings.tagger_runtime)
    servicer = TaggerServicer(registry, store, settings, detector, policy)
    server = await start_server([binding(servicer)], settings.server)
    warm_up = asyncio.create_task(_load_preferred(servicer))
    try:
        yield TaggerService(server, servicer)
    finally:
        warm_up.cancel()
        await server.stop(settings.server.shutdown_grace)
        servicer.close()


async def _load_preferred(servicer: TaggerServicer) -> None:
    """Load the preferred model now rather than on the first upload (a ViT takes seconds)."""
    try:
        await asyncio.to_thread(lambda: servicer.load_engine(servicer.preferred_tagger()))
    except Exception:
        log.exception("could not preload the preferred tagger; requests will report why")


async def serve(settings: TaggerSettings) -> None:
    from services.common.storage_runtime import open_store

    # The tagger reads images the dataset service stored, so it only talks to a configured store;
    # an embedded one of its own would always be empty.
    handle = await asyncio.to_thread(open_store, settings.s3, settings.data_dir) if settings.s3.endpoint else None
    try:
        async with running_tagger_service(settings, handle.store if handle else None) as service:
            log.info("tagger service ready", extra={"fields": {"address": service.address}})
            await wait_for_termination_signal()
    finally:
        if handle is not None:
            handle.close()


def main() -> None:
    settings = TaggerSettings()
    configure_logging(settings.log_level, settings.json_logs)
    asyncio.run(serve(settings))
