"""Run the dataset service: `python -m services.dataset` (settings from KILN_… variables).

`build_dataset` wires the service from its settings and object store; the server, the demo and
the tests all start it through `running_dataset_service`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import pathlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from kiln.v1 import dataset_pb2, dataset_pb2_grpc
from services.common.body_detector import BodyDetector
from services.common.database import create_engine
from services.common.hosting import Background, Continuous, Periodic, RunningServer, run_service
from services.common.idempotency import IdempotencyKeys
from services.common.internal_auth import InternalCredential
from services.common.internal_client import ROUND_ROBIN, internal_aio_channel, replicas_target
from services.common.logs import configure_logging
from services.common.migrations import SchemaMigrations
from services.common.objectstore import ObjectStore
from services.common.observability import Observability
from services.common.outages import OBJECT_STORE
from services.common.pagination import PageTokens
from services.common.process import serve_process
from services.common.readiness import Probe, database_probe
from services.common.server import ServiceBinding, tolerant_binding
from services.common.transactions import Transactions
from services.dataset import schema
from services.dataset.autotag import TaggingSettings, TaggingWorker
from services.dataset.servicer import DatasetServicer
from services.dataset.settings import DatasetSettings
from services.dataset.tagger_client import GrpcTaggingClient

MIGRATIONS = pathlib.Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version_dataset"
SCHEMA = SchemaMigrations("dataset", MIGRATIONS, VERSION_TABLE)
log = logging.getLogger(__name__)


@dataclass
class DatasetComponents:
    """Everything one dataset-service replica is made of, built once, in dependency order."""

    settings: DatasetSettings
    store: ObjectStore
    transactions: Transactions
    servicer: DatasetServicer
    tagging: TaggingWorker | None
    credential: InternalCredential
    observability: Observability
    tagger_client: GrpcTaggingClient | None
    # Set once the first sweep round (at start-up) has run: what tools and tests wait on.
    swept: asyncio.Event = field(default_factory=asyncio.Event)

    def binding(self) -> ServiceBinding:
        return tolerant_binding(dataset_pb2, "DatasetService", dataset_pb2_grpc.add_DatasetServiceServicer_to_server,
                                self.servicer)

    def background(self) -> list[Background]:
        work: list[Background] = [
            Periodic("sweeps", self.settings.sweep_interval_seconds, self.sweep_once),
            Periodic("queue metrics", self.settings.metrics_interval_seconds, self.record_queue_metrics),
        ]
        if self.tagging is not None:
            work.append(Continuous("tagging", self.tagging.run_forever))
        return work

    def probes(self) -> list[Probe]:
        return [database_probe(self.transactions.engine), Probe(OBJECT_STORE, self.store.check_reachable)]

    async def sweep_once(self) -> None:
        """One round of the periodic clean-up. Each step runs even when an earlier one failed."""
        min_age = dt.timedelta(seconds=self.settings.orphan_min_age_seconds)
        steps: list[tuple[str, Callable[[], Awaitable[int]]]] = [
            ("expired uploads", self.servicer.sweep_expired_uploads),
            ("orphaned objects", lambda: self.servicer.sweep_orphans(min_age)),
            ("abandoned staging objects", self.servicer.sweep_abandoned_staging),
        ]
        for what, step in steps:
            try:
                removed = await step()
            except Exception:
                log.exception("sweep failed", extra={"fields": {"what": what}})
                continue
            if removed:
                log.info(f"{what} removed", extra={"fields": {"count": removed}})
        self.swept.set()

    async def record_queue_metrics(self) -> None:
        if self.tagging is None:
            return
        queue = self.tagging.queue
        stats = await self.transactions.run(queue.stats, read_only=True)
        self.observability.metrics.record_queue(queue.name, stats)

    async def close(self) -> None:
        self.servicer.close()
        self.transactions.close()
        if self.tagger_client is not None:
            await self.tagger_client.close()
        self.transactions.engine.dispose()
        self.observability.close()


def tagging_settings(settings: DatasetSettings) -> TaggingSettings:
    return TaggingSettings(batch_size=settings.tagging_batch_size, max_attempts=settings.tagging_max_attempts)


async def build_dataset(settings: DatasetSettings, store: ObjectStore,
                        observability: Observability | None = None) -> DatasetComponents:
    credential = InternalCredential(settings.internal_auth)
    observability = observability or Observability.for_service("dataset", settings)
    engine = create_engine(settings.database_url(), timeout=settings.database_timeout_seconds,
                           connect_timeout=settings.database_connect_timeout_seconds,
                           pool_size=settings.database_pool_size)
    await asyncio.to_thread(SCHEMA.prepare, engine, settings.migrate_on_start)
    transactions = Transactions(engine, IdempotencyKeys(schema.request_ids), store,
                                pool_size=settings.database_pool_size, store_pool_size=settings.s3.max_parallel_calls,
                                database_timeout=settings.database_timeout_seconds,
                                store_timeout=settings.s3.call_timeout_seconds, name="dataset",
                                observer=observability.metrics)
    detector = BodyDetector() if settings.crop_use_detector else None
    tagging = client = None
    if settings.tagger_address:
        tagging_config = tagging_settings(settings)
        channel = internal_aio_channel(replicas_target(settings.tagger_address), settings.internal_auth,
                                       interceptors=observability.tracing.client_interceptors(), options=ROUND_ROBIN)
        # The client gives up when the worker does, so a call never outlives the claim on its images.
        client = GrpcTaggingClient(channel, timeout=tagging_config.call_timeout.total_seconds())
        tagging = TaggingWorker(transactions, client, tagging_config,
                                observability.tracing.tracer("kiln.dataset.tagging"))
    servicer = DatasetServicer(transactions, store, settings, PageTokens.from_settings(settings), detector, tagging)
    return DatasetComponents(settings, store, transactions, servicer, tagging, credential, observability, client)


@dataclass
class DatasetService:
    """A started dataset service: its server and its parts (what tests and the demo hold on to)."""

    server: RunningServer
    components: DatasetComponents

    @property
    def address(self) -> str:
        return self.server.address

    @property
    def servicer(self) -> DatasetServicer:
        return self.components.servicer


@contextlib.asynccontextmanager
async def running_dataset_service(settings: DatasetSettings, store: ObjectStore,
                                  observability: Observability | None = None) -> AsyncIterator[DatasetService]:
    """Start the service on settings.server (port 0 picks a free port) and stop it on exit."""
    components = await build_dataset(settings, store, observability)
    try:
        async with run_service([components.binding()], settings=settings.server,
                               interceptors=components.observability.internal_interceptors(components.credential),
                               background=components.background(), probes=components.probes(),
                               metrics=components.observability.metrics, metrics_settings=settings.metrics,
                               require_client_certificate=components.credential.requires_client_certificate
                               ) as server:
            yield DatasetService(server, components)
    finally:
        await components.close()


async def serve(settings: DatasetSettings, stop: asyncio.Event) -> None:
    from services.common.storage_runtime import open_store

    handle = await asyncio.to_thread(open_store, settings.s3, settings.data_dir)
    try:
        async with running_dataset_service(settings, handle.store) as service:
            log.info("dataset service ready", extra={"fields": {"address": service.address,
                                                                "metrics": service.server.metrics_url}})
            await stop.wait()
    finally:
        handle.close()


def main() -> None:
    settings = DatasetSettings()
    configure_logging(settings.log_level, settings.json_logs)
    serve_process(lambda stop: serve(settings, stop), settings.server.shutdown_grace)
