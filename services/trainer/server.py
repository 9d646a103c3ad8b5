"""Run the trainer service: `python -m services.trainer` (settings from KILN_… variables).

`build_trainer` wires the service from its settings and object store; the server, the demo and
the tests all start it through `running_trainer_service`. Workers
(`python -m services.trainer.worker`) connect to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import pathlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from kiln.v1 import (
    trainer_pb2,
    trainer_pb2_grpc,
    trainer_worker_pb2,
    trainer_worker_pb2_grpc,
    webhooks_pb2,
    webhooks_pb2_grpc,
)
from services.common.database import create_engine
from services.common.hosting import Background, Periodic, RunningServer, run_service
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
from services.trainer import schema
from services.trainer.engine.model_store import ModelStore
from services.trainer.event_hub import QUEUE, EventHub
from services.trainer.event_log import EventLog
from services.trainer.generation_queue import GenerationQueue
from services.trainer.service_base import TrainerDependencies
from services.trainer.service_settings import TrainerServiceSettings
from services.trainer.servicer import TrainerServicer, TrainingWorkerServicer
from services.trainer.snapshot_source import SnapshotSource
from services.trainer.training_queue import QueueRules, TrainingQueue
from services.trainer.webhooks.addresses import AddressPolicy
from services.trainer.webhooks.dispatcher import WebhookDispatcher
from services.trainer.webhooks.outbox import Outbox
from services.trainer.webhooks.rpc import WebhookRpcs
from services.trainer.webhooks.sender import WebhookSender

MIGRATIONS = pathlib.Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version_trainer"
SCHEMA = SchemaMigrations("trainer", MIGRATIONS, VERSION_TABLE)
log = logging.getLogger(__name__)


@dataclass
class TrainerComponents:
    settings: TrainerServiceSettings
    deps: TrainerDependencies
    servicer: TrainerServicer
    workers: TrainingWorkerServicer
    webhooks: WebhookRpcs
    dispatcher: WebhookDispatcher
    credential: InternalCredential
    observability: Observability

    def bindings(self) -> list[ServiceBinding]:
        return [
            tolerant_binding(trainer_pb2, "TrainerService", trainer_pb2_grpc.add_TrainerServiceServicer_to_server,
                             self.servicer),
            tolerant_binding(trainer_worker_pb2, "TrainingWorkerService",
                             trainer_worker_pb2_grpc.add_TrainingWorkerServiceServicer_to_server, self.workers),
            tolerant_binding(webhooks_pb2, "WebhookService", webhooks_pb2_grpc.add_WebhookServiceServicer_to_server,
                             self.webhooks),
        ]

    def background(self) -> list[Background]:
        return [Periodic("queue maintenance", self.settings.queue_maintenance_seconds, self.maintain_queue),
                self.dispatcher, self.dispatcher.retention()]

    def probes(self) -> list[Probe]:
        return [database_probe(self.deps.transactions.engine), Probe(OBJECT_STORE, self.deps.store.check_reachable)]

    async def maintain_queue(self) -> None:
        """Leases that ran out put their jobs back (or fail them), and the queue's figures are sampled."""
        queue = self.deps.queue
        lost = await self.deps.transactions.run(queue.expire_leases)
        for job_id in lost:
            self.deps.hub.notify(job_id)
        lost_generations = await self.deps.transactions.run(self.deps.generations.expire_leases)
        for generation_id in lost_generations:
            self.deps.hub.notify(f"generation:{generation_id}")
        lost += lost_generations
        if lost:
            self.deps.hub.notify(QUEUE)
        stats = await self.deps.transactions.run(queue.leased.stats, read_only=True)
        self.observability.metrics.record_queue(queue.leased.name, stats)
        outbox = await self.deps.transactions.run(self.dispatcher.queue.stats, read_only=True)
        self.observability.metrics.record_queue(self.dispatcher.queue.name, outbox)

    async def close(self) -> None:
        self.servicer.close()
        self.workers.close()
        await self.dispatcher.close()
        await self.deps.snapshots.close()
        self.deps.transactions.close()
        self.deps.transactions.engine.dispose()
        self.observability.close()


async def build_trainer(settings: TrainerServiceSettings, store: ObjectStore,
                        observability: Observability | None = None) -> TrainerComponents:
    credential = InternalCredential(settings.internal_auth)
    observability = observability or Observability.for_service("trainer", settings)
    engine = create_engine(settings.database_url(), timeout=settings.database_timeout_seconds,
                           connect_timeout=settings.database_connect_timeout_seconds,
                           pool_size=settings.database_pool_size)
    await asyncio.to_thread(SCHEMA.prepare, engine, settings.migrate_on_start)
    transactions = Transactions(engine, IdempotencyKeys(schema.request_ids), store,
                                pool_size=settings.database_pool_size, store_pool_size=settings.s3.max_parallel_calls,
                                database_timeout=settings.database_timeout_seconds,
                                store_timeout=settings.s3.call_timeout_seconds, name="trainer",
                                observer=observability.metrics)
    channel = None
    if settings.dataset_address:
        channel = internal_aio_channel(replicas_target(settings.dataset_address), settings.internal_auth,
                                       interceptors=observability.tracing.client_interceptors(), options=ROUND_ROBIN)
    rules = QueueRules(lease=dt.timedelta(seconds=settings.training_lease_seconds),
                       max_attempts=settings.training_max_attempts,
                       max_running_per_tenant=settings.max_running_jobs_per_tenant,
                       worker_seen=dt.timedelta(seconds=settings.worker_seen_seconds))
    outbox = Outbox()
    queue = TrainingQueue(rules, EventLog(settings.events_kept_per_job, outbox))
    page_tokens = PageTokens.from_settings(settings)
    deps = TrainerDependencies(transactions, store, settings, page_tokens, queue,
                               ModelStore(settings.models_dir), SnapshotSource(channel), EventHub(),
                               GenerationQueue(rules.lease, settings.training_max_attempts), outbox)
    policy = AddressPolicy(settings.webhook_allow_private_networks, settings.webhook_blocked_networks)
    sender = WebhookSender(policy, settings.webhook_timeout_seconds, settings.webhook_ca_file)
    dispatcher = WebhookDispatcher(transactions, settings, sender)
    outbox.wake_on_commit(dispatcher.wake)
    webhooks = WebhookRpcs(transactions, page_tokens, settings, policy, outbox)
    return TrainerComponents(settings, deps, TrainerServicer(deps), TrainingWorkerServicer(deps), webhooks,
                             dispatcher, credential, observability)


@dataclass
class TrainerService:
    server: RunningServer
    components: TrainerComponents

    @property
    def address(self) -> str:
        return self.server.address


@contextlib.asynccontextmanager
async def running_trainer_service(settings: TrainerServiceSettings, store: ObjectStore,
                                  observability: Observability | None = None) -> AsyncIterator[TrainerService]:
    """Start the service on settings.server (port 0 picks a free port) and stop it on exit."""
    components = await build_trainer(settings, store, observability)
    try:
        async with run_service(components.bindings(), settings=settings.server,
                               interceptors=components.observability.internal_interceptors(components.credential),
                               background=components.background(), probes=components.probes(),
                               metrics=components.observability.metrics, metrics_settings=settings.metrics,
                               require_client_certificate=components.credential.requires_client_certificate
                               ) as server:
            yield TrainerService(server, components)
    finally:
        await components.close()


async def serve(settings: TrainerServiceSettings, stop: asyncio.Event) -> None:
    from services.common.storage_runtime import open_store

    handle = await asyncio.to_thread(open_store, settings.s3, settings.data_dir)
    try:
        async with running_trainer_service(settings, handle.store) as service:
            log.info("trainer service ready", extra={"fields": {"address": service.address,
                                                                "metrics": service.server.metrics_url}})
            await stop.wait()
    finally:
        handle.close()


def main() -> None:
    settings = TrainerServiceSettings()
    configure_logging(settings.log_level, settings.json_logs)
    serve_process(lambda stop: serve(settings, stop), settings.server.shutdown_grace)
