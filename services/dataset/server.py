"""Run the dataset service: `python -m services.dataset` (settings from KILN_… variables)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
from collections.abc import AsyncIterator, Awaitable, Callable

from kiln.v1 import dataset_pb2, dataset_pb2_grpc
from services.common.body_detector import BodyDetector
from services.common.database import create_engine, migrate
from services.common.logs import configure_logging
from services.common.objectstore import ObjectStore
from services.common.server import (
    RunningService,
    ServiceBinding,
    start_server,
    tolerant_binding,
    wait_for_termination_signal,
)
from services.dataset.autotag import TaggingSettings, TaggingWorker
from services.dataset.servicer import DatasetServicer
from services.dataset.settings import DatasetSettings
from services.dataset.tagger_client import GrpcTaggingClient

MIGRATIONS = pathlib.Path(__file__).parent / "migrations"
SWEEP_INTERVAL_S = 600
log = logging.getLogger(__name__)


DatasetService = RunningService[DatasetServicer]


def binding(servicer: DatasetServicer) -> ServiceBinding:
    return tolerant_binding(dataset_pb2, "DatasetService", dataset_pb2_grpc.add_DatasetServiceServicer_to_server,
                            servicer)


@contextlib.asynccontextmanager
async def running_dataset_service(settings: DatasetSettings, store: ObjectStore) -> AsyncIterator[DatasetService]:
    """Start the service on settings.server (port 0 picks a free port) and stop it on exit."""
    engine = create_engine(settings.database_url())
    await asyncio.to_thread(migrate, engine, MIGRATIONS, "alembic_version_dataset")
    detector = BodyDetector() if settings.crop_use_detector else None
    tagging = tagging_settings(settings)
    # The client gives up when the worker does, so a call never outlives the claim on its images.
    client = (GrpcTaggingClient(settings.tagger_address, timeout=tagging.call_timeout.total_seconds())
              if settings.tagger_address else None)
    servicer = DatasetServicer(engine, store, settings, detector)
    if client is not None:
        servicer.tagging = TaggingWorker(engine, client, tagging, servicer.run_db)
    server = await start_server([binding(servicer)], settings.server)
    background = [asyncio.create_task(_sweep_forever(servicer))]
    if servicer.tagging is not None:
        background.append(asyncio.create_task(servicer.tagging.run_forever()))
    try:
        yield DatasetService(server, servicer)
    finally:
        for task in background:
            task.cancel()
        await server.stop(settings.server.shutdown_grace)
        servicer.close()
        if client is not None:
            await client.close()
        engine.dispose()


def tagging_settings(settings: DatasetSettings) -> TaggingSettings:
    return TaggingSettings(batch_size=settings.tagging_batch_size, max_attempts=settings.tagging_max_attempts)


async def _sweep_forever(servicer: DatasetServicer) -> None:
    while True:
        await sweep_once(servicer)
        await asyncio.sleep(SWEEP_INTERVAL_S)


async def sweep_once(servicer: DatasetServicer) -> None:
    """One round of the periodic clean-up. Each step runs even when an earlier one failed."""
    steps: list[tuple[str, Callable[[], Awaitable[int]]]] = [
        ("expired uploads", servicer.sweep_expired_uploads),
        ("orphaned objects", servicer.sweep_orphans),
        ("abandoned staging objects", servicer.sweep_abandoned_staging),
    ]
    for what, step in steps:
        try:
            removed = await step()
        except Exception:
            log.exception("sweep failed", extra={"fields": {"what": what}})
            continue
        if removed:
            log.info(f"{what} removed", extra={"fields": {"count": removed}})


async def serve(settings: DatasetSettings) -> None:
    from services.common.storage_runtime import open_store

    handle = await asyncio.to_thread(open_store, settings.s3, settings.data_dir)
    try:
        async with running_dataset_service(settings, handle.store) as service:
            log.info("dataset service ready", extra={"fields": {"address": service.address}})
            await wait_for_termination_signal()
    finally:
        handle.close()


def main() -> None:
    settings = DatasetSettings()
    configure_logging(settings.log_level, settings.json_logs)
    asyncio.run(serve(settings))
