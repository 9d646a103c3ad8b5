"""What every group of trainer-service handlers shares: its dependencies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from services.common.cpu_pool import CpuPool
from services.common.objectstore import ObjectStore
from services.common.pagination import PageTokens
from services.common.transactions import Transactions
from services.trainer.engine.model_store import ModelStore
from services.trainer.event_hub import EventHub
from services.trainer.generation_queue import GenerationQueue
from services.trainer.service_settings import TrainerServiceSettings
from services.trainer.snapshot_source import SnapshotSource
from services.trainer.training_queue import TrainingQueue
from services.trainer.webhooks.outbox import Outbox

T = TypeVar("T")


@dataclass
class TrainerDependencies:
    transactions: Transactions
    store: ObjectStore
    settings: TrainerServiceSettings
    page_tokens: PageTokens
    queue: TrainingQueue
    models: ModelStore
    snapshots: SnapshotSource
    hub: EventHub
    generations: GenerationQueue
    # Webhook deliveries, written in the transactions of the events they tell of.
    outbox: Outbox


class TrainerBase:
    def __init__(self, deps: TrainerDependencies) -> None:
        self._deps = deps
        self._tx = deps.transactions
        self._store = deps.store
        self._settings = deps.settings
        self._page_tokens = deps.page_tokens
        self._queue = deps.queue
        self._models = deps.models
        self._snapshots = deps.snapshots
        self._hub = deps.hub
        self._events = deps.queue.events
        # Validation plans buckets for every image: CPU work, off the event loop.
        self._cpu_pool = CpuPool(2, "trainer-cpu")

    def close(self) -> None:
        self._cpu_pool.close()

    async def _cpu(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._cpu_pool.run(fn, *args)
