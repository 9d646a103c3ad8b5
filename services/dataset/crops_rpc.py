"""Batch crop: boxes for many images, progress streamed as each is recorded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from sqlalchemy.engine import Connection, Row

from kiln.v1 import dataset_pb2 as pb
from services.common.call_context import current_tenant
from services.common.errors import (
    invalid_field,
    stream_errors,
)
from services.common.idempotency import check_request_id, request_fingerprint
from services.common.objectstore import ObjectNotFound
from services.dataset import names, records
from services.dataset.convert import (
    CROP_MODE_TO_DB,
)
from services.dataset.crop_render import (
    choose_box,
    crop_record_values,
    crop_result,
)
from services.dataset.cropping import center_box
from services.dataset.requests import (
    check_target_size,
    child_ids,
    require_all,
)
from services.dataset.service_base import ServicerBase

METHOD = "CropImages"


class CropRpcs(ServicerBase):
    @stream_errors
    async def CropImages(self, request: pb.CropImagesRequest,
                         context: grpc.aio.ServicerContext) -> AsyncIterator[pb.CropImagesResponse]:
        dataset_id = names.parse_dataset(request.parent, "parent")
        tenant = current_tenant()
        check_request_id(request.request_id)
        if request.mode not in (pb.CROP_MODE_FOCUS, pb.CROP_MODE_CENTER):
            raise invalid_field("mode", "FOCUS or CENTER (set a MANUAL box with UpdateImage)")
        image_ids = child_ids(request.names, dataset_id, required=False)
        mode = CROP_MODE_TO_DB[request.mode]

        def load(conn: Connection) -> tuple[Row[Any], list[Row[Any]]] | pb.CropImagesResponse:
            earlier = self._tx.replay(conn, tenant, METHOD, request, pb.CropImagesResponse)
            if earlier is not None:
                return earlier
            dataset = records.get_dataset(conn, tenant, dataset_id)
            rows = records.images_of(conn, dataset_id, image_ids or None)
            if image_ids:
                require_all(rows, image_ids, dataset_id)
            return dataset, rows

        loaded = await self._tx.run(load, read_only=True)
        if isinstance(loaded, pb.CropImagesResponse):
            # A retry of a finished batch: its summary, with no image cropped again.
            yield loaded
            return
        dataset, rows = loaded
        check_target_size(dataset.family, request.target_width, request.target_height, "")
        total = len(rows)
        upscaled = 0
        done = 0
        # Bounded fan-out: enough in flight to keep the image pool and the store busy.
        pending: set[asyncio.Task[pb.Image | None]] = set()
        queue = iter(rows)
        try:
            while True:
                while len(pending) < self._settings.image_workers * 2:
                    row = next(queue, None)
                    if row is None:
                        break
                    pending.add(asyncio.create_task(self._crop_one(tenant, dataset_id, row, mode,
                                                                   request.target_width, request.target_height)))
                if not pending:
                    break
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    image = task.result()
                    done += 1
                    if image is None:  # deleted while the batch ran
                        yield pb.CropImagesResponse(done=done, total=total, upscaled_count=upscaled)
                        continue
                    upscaled += int(image.crop.upscaled)
                    yield pb.CropImagesResponse(done=done, total=total, image=image, upscaled_count=upscaled)
        finally:
            for task in pending:
                task.cancel()
        summary = pb.CropImagesResponse(done=done, total=total, upscaled_count=upscaled)
        yield await self._remember_batch(tenant, request, summary)

    async def _remember_batch(self, tenant: str, request: pb.CropImagesRequest,
                              summary: pb.CropImagesResponse) -> pb.CropImagesResponse:
        """Record a finished batch under its request_id. Each image was committed on its own as it was
        cropped, so only a batch that ran to the end is remembered: a retry of one that was cut short
        crops again (the same request gives the same boxes)."""
        def record(conn: Connection) -> pb.CropImagesResponse:
            # A concurrent retry may have finished first: its summary stands.
            earlier = self._tx.replay(conn, tenant, METHOD, request, pb.CropImagesResponse)
            if earlier is not None:
                return earlier
            self._tx.keys.remember(conn, tenant, METHOD, request.request_id, request_fingerprint(request), summary)
            return summary

        if not request.request_id:
            return summary
        return await self._tx.run(record)

    async def _crop_one(self, tenant: str, dataset_id: str, row: Row[Any], mode: str,
                        target_width: int, target_height: int) -> pb.Image | None:
        """The image with its new crop, or None when it was deleted meanwhile."""
        if mode == "focus":
            try:
                original = await self._tx.objects.run(self._store.get_bytes, row.original_key)
            except ObjectNotFound:
                return None
            box = await self._cpu(choose_box, original, row.width, row.height, mode, target_width, target_height,
                                  self._detector)
        else:
            box = center_box(row.width, row.height, target_width, target_height)
        result = crop_result(dataset_id, row.id, box, target_width, target_height, mode)

        stale: list[str] = []

        def commit(conn: Connection) -> pb.Image | None:
            stale.clear()
            records.get_dataset(conn, tenant, dataset_id, lock=True)
            if not records.image_exists(conn, dataset_id, row.id):
                return None
            current = records.get_image(conn, tenant, dataset_id, row.id)
            stale.extend(self._stale_crop(current, result.key))
            records.update_image(conn, row.id, **crop_record_values(current, result))
            return self._image_message(conn, tenant, dataset_id, row.id)

        return await self._tx.commit(commit, replaced=stale)
