"""What every group of DatasetService handlers shares: its dependencies and message building.

Transactions, idempotent request ids and the fate of written objects are the kit's
(services/common/transactions.py). Decoding and cropping run in the image pool, off the event
loop. Every write transaction locks its dataset row first, so writers of one dataset are
serialised on SQLite and PostgreSQL alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.engine import Connection, Row

from kiln.v1 import dataset_pb2 as pb
from services.common.cpu_pool import CpuPool
from services.common.objectstore import ObjectStore
from services.common.pagination import PageTokens
from services.common.transactions import Transactions
from services.dataset import records
from services.dataset.autotag import TaggingWorker
from services.dataset.convert import SetLimits, dataset_message, image_message
from services.dataset.cropping import Detector
from services.dataset.image_check import ImageLimits
from services.dataset.settings import DatasetSettings

T = TypeVar("T")


class ServicerBase:
    def __init__(self, transactions: Transactions, store: ObjectStore, settings: DatasetSettings,
                 page_tokens: PageTokens, detector: Detector | None, tagging: TaggingWorker | None = None) -> None:
        self._tx = transactions
        self._page_tokens = page_tokens
        self.tagging = tagging
        self._store = store
        self._settings = settings
        self._detector = detector
        self._image_pool = CpuPool(settings.image_workers, "dataset-img")
        self._limits = ImageLimits(settings.max_upload_bytes, settings.max_image_pixels, settings.min_image_side)
        self._set_limits = SetLimits(settings.max_training_images, settings.max_regularization_images)

    def close(self) -> None:
        self._image_pool.close()

    async def _cpu(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._image_pool.run(fn, *args)

    def _dataset_message(self, conn: Connection, row: Row[Any]) -> pb.Dataset:
        return dataset_message(row, records.dataset_counts(conn, [row])[row.id], self._set_limits)

    def _image_message(self, conn: Connection, tenant: str, dataset_id: str, image_id: str) -> pb.Image:
        dataset = records.get_dataset(conn, tenant, dataset_id)
        return image_message(records.image_of(conn, dataset_id, image_id), dataset.default_repeat)

    @staticmethod
    def _stale_crop(row: Row[Any], new_key: str) -> list[str]:
        """The cached render of the replaced crop (snapshots never read renders)."""
        return [row.crop_key] if row.crop_key and row.crop_key != new_key else []
