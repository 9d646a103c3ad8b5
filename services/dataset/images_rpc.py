"""Images: get, list, update (tags, repeat, manual crop), delete, read back."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import grpc
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from kiln.v1 import dataset_pb2 as pb
from services.common.call_context import current_tenant
from services.common.errors import (
    ServiceError,
    failed_precondition,
    invalid_field,
    stream_errors,
    unary_errors,
)
from services.common.idempotency import check_request_id
from services.common.object_streams import ObjectStream
from services.common.objectstore import ObjectNotFound
from services.common.pagination import page_size
from services.dataset import captions, names, records, schema
from services.dataset.convert import (
    image_message,
)
from services.dataset.crop_render import (
    CropResult,
    crop_png,
    crop_record_values,
    crop_result,
    thumbnail_webp,
)
from services.dataset.cropping import Box
from services.dataset.requests import (
    check_repeat,
    check_target_size,
    child_ids,
    mask_paths,
    optional_role,
    require_all,
)
from services.dataset.service_base import ServicerBase

READ_CHUNK = 1024 * 1024
IMAGE_FIELDS = {"tags", "repeat", "crop"}


class ImageRpcs(ServicerBase):
    @unary_errors
    async def GetImage(self, request: pb.GetImageRequest, context: grpc.aio.ServicerContext) -> pb.Image:
        image = names.parse_image(request.name)
        tenant = current_tenant()
        return await self._tx.run(lambda conn: self._image_message(conn, tenant, image.dataset_id, image.image_id),
                              read_only=True)

    @unary_errors
    async def ListImages(self, request: pb.ListImagesRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListImagesResponse:
        dataset_id = names.parse_dataset(request.parent, "parent")
        tenant = current_tenant()
        role = optional_role(request.role, "role")
        size = page_size(request.page_size, 100, 1000)
        query_key = f"images:{tenant}:{dataset_id}:{role}"
        i = schema.images.c

        def read(conn: Connection) -> pb.ListImagesResponse:
            dataset = records.get_dataset(conn, tenant, dataset_id)
            where = [i.dataset_id == dataset_id, *([i.role == role] if role else [])]
            total = conn.execute(sa.select(sa.func.count()).where(*where)).scalar_one()
            rows, token = self._page_tokens.keyset_page(conn, sa.select(schema.images).where(*where),
                                                        i.create_time, i.id, request.page_token, size, query_key)
            return pb.ListImagesResponse(images=[image_message(r, dataset.default_repeat) for r in rows],
                                         total_size=total, next_page_token=token)

        return await self._tx.run(read, read_only=True)

    @unary_errors
    async def UpdateImage(self, request: pb.UpdateImageRequest, context: grpc.aio.ServicerContext) -> pb.Image:
        target = names.parse_image(request.image.name, "image.name")
        paths = mask_paths(request.update_mask.paths, IMAGE_FIELDS)
        spec = request.image
        tags = captions.validate_tags(spec.tags, "image.tags") if "tags" in paths else None
        if "repeat" in paths:
            check_repeat(spec.repeat, "image.repeat")
        check_request_id(request.request_id)
        crop: CropResult | None = None
        if "crop" in paths:
            checked = await self._manual_crop(context, request, target)
            if isinstance(checked, pb.Image):
                return checked
            crop = checked
        doomed: list[str] = []

        def work(conn: Connection, tenant: str) -> pb.Image:
            doomed.clear()
            records.get_dataset(conn, tenant, target.dataset_id, lock=True)
            row = records.get_image(conn, tenant, target.dataset_id, target.image_id)
            values: dict[str, Any] = {}
            if tags is not None:
                values["tags"] = tags
                values["caption_edited"] = True
            if "repeat" in paths:
                values["repeat"] = spec.repeat
            if crop is not None:
                values.update(crop_record_values(row, crop))
                doomed.extend(self._stale_crop(row, crop.key))
            records.update_image(conn, target.image_id, **values)
            records.touch_dataset(conn, target.dataset_id)
            return self._image_message(conn, tenant, target.dataset_id, target.image_id)

        return await self._tx.idempotent("UpdateImage", request, pb.Image, work, replaced=doomed)

    async def _manual_crop(self, context: grpc.aio.ServicerContext, request: pb.UpdateImageRequest,
                           target: names.ImageName) -> CropResult | pb.Image:
        """The crop to record, or the answer a retry of this request gets."""
        tenant = current_tenant()
        crop = request.image.crop

        def load(conn: Connection) -> tuple[Row[Any], Row[Any]] | pb.Image:
            # Before the box is checked against the image: it may have been deleted since the first attempt.
            earlier = self._tx.replay(conn, tenant, "UpdateImage", request, pb.Image)
            if earlier is not None:
                return earlier
            return (records.get_dataset(conn, tenant, target.dataset_id),
                    records.get_image(conn, tenant, target.dataset_id, target.image_id))

        loaded = await self._tx.run(load, read_only=True)
        if isinstance(loaded, pb.Image):
            return loaded
        dataset, row = loaded
        check_target_size(dataset.family, crop.target_width, crop.target_height, "image.crop")
        box = Box(crop.box.left, crop.box.top, crop.box.width, crop.box.height)
        if not box.fits(row.width, row.height):
            raise invalid_field("image.crop.box", f"the box must lie inside the {row.width}x{row.height} image")
        if crop.mode not in (pb.CROP_MODE_UNSPECIFIED, pb.CROP_MODE_MANUAL):
            raise invalid_field("image.crop.mode", "only MANUAL crops are set by hand; use CropImages for the others")
        return crop_result(target.dataset_id, target.image_id, box, crop.target_width, crop.target_height, "manual")

    @unary_errors
    async def DeleteImage(self, request: pb.DeleteImageRequest,
                          context: grpc.aio.ServicerContext) -> pb.DeleteImageResponse:
        target = names.parse_image(request.name)
        doomed: list[str] = []

        def work(conn: Connection, tenant: str) -> pb.DeleteImageResponse:
            records.get_dataset(conn, tenant, target.dataset_id, lock=True)
            row = records.get_image(conn, tenant, target.dataset_id, target.image_id)
            doomed[:] = self._delete_rows(conn, target.dataset_id, [row])
            return pb.DeleteImageResponse()

        return await self._tx.idempotent("DeleteImage", request, pb.DeleteImageResponse, work, replaced=doomed)

    def _delete_rows(self, conn: Connection, dataset_id: str, rows: Sequence[Row[Any]]) -> list[str]:
        """Delete the records; returns the object keys to delete once that has committed
        (objects a snapshot reads are kept)."""
        keys = [k for r in rows for k in records.image_object_keys(r)]
        keep = records.retained_keys(conn, dataset_id, keys)
        conn.execute(schema.images.delete().where(schema.images.c.id.in_([r.id for r in rows])))
        records.touch_dataset(conn, dataset_id)
        return [k for k in keys if k not in keep]

    @unary_errors
    async def BatchDeleteImages(self, request: pb.BatchDeleteImagesRequest,
                                context: grpc.aio.ServicerContext) -> pb.BatchDeleteImagesResponse:
        dataset_id = names.parse_dataset(request.parent, "parent")
        image_ids = child_ids(request.names, dataset_id, required=True)
        doomed: list[str] = []

        def work(conn: Connection, tenant: str) -> pb.BatchDeleteImagesResponse:
            records.get_dataset(conn, tenant, dataset_id, lock=True)
            rows = records.images_of(conn, dataset_id, image_ids)
            require_all(rows, image_ids, dataset_id)
            doomed[:] = self._delete_rows(conn, dataset_id, rows)
            return pb.BatchDeleteImagesResponse(deleted_count=len(rows))

        return await self._tx.idempotent("BatchDeleteImages", request, pb.BatchDeleteImagesResponse, work,
                                      replaced=doomed)

    @stream_errors
    async def ReadImage(self, request: pb.ReadImageRequest,
                        context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ReadImageResponse]:
        target = names.parse_image(request.name)
        tenant = current_tenant()
        row = await self._tx.run(lambda conn: records.get_image(conn, tenant, target.dataset_id, target.image_id),
                             read_only=True)
        key, content_type, width, height = _variant(row, request.variant)
        with _gone_as_not_found(request.name):
            size = await self._render_derived(row, request.variant) or row.size_bytes
            # Started before the metadata goes out, so a missing object fails the call cleanly.
            stream = await ObjectStream.open(self._tx.objects, self._store, key, READ_CHUNK)
        yield pb.ReadImageResponse(metadata=pb.ReadImageMetadata(
            content_type=content_type, size_bytes=size, width=width, height=height))
        async for chunk in stream:
            yield pb.ReadImageResponse(chunk=chunk)

    @unary_errors
    async def GetImageUrl(self, request: pb.GetImageUrlRequest,
                          context: grpc.aio.ServicerContext) -> pb.GetImageUrlResponse:
        target = names.parse_image(request.name)
        tenant = current_tenant()
        ttl_seconds = request.ttl_seconds or 3600
        if not 1 <= ttl_seconds <= 7 * 24 * 3600:
            raise invalid_field("ttl_seconds", "1..604800 seconds (S3 presigned URLs last at most 7 days)")
        row = await self._tx.run(lambda conn: records.get_image(conn, tenant, target.dataset_id, target.image_id),
                             read_only=True)
        key, *_ = _variant(row, request.variant)
        with _gone_as_not_found(request.name):
            await self._render_derived(row, request.variant)
        ttl = dt.timedelta(seconds=ttl_seconds)
        response = pb.GetImageUrlResponse(url=await self._tx.objects.run(self._store.presigned_get, key, ttl))
        response.expire_time.FromDatetime(records.now() + ttl)
        return response

    async def _render_derived(self, row: Row[Any], variant: int) -> int | None:
        """Size of the derived picture the variant names, drawn if missing; None for the original."""
        if variant == pb.IMAGE_VARIANT_THUMBNAIL:
            return await self._ensure_derived(row.original_key, row.thumbnail_key, "image/webp", thumbnail_webp)
        if variant == pb.IMAGE_VARIANT_CROPPED:
            result = crop_result(row.dataset_id, row.id, Box(row.crop_left, row.crop_top, row.crop_width,
                                                             row.crop_height),
                                 row.crop_target_width, row.crop_target_height, row.crop_mode)
            return await self._ensure_derived(row.original_key, result.key, "image/png", crop_png(result))
        return None

    async def _ensure_derived(self, original_key: str, key: str, content_type: str,
                              render: Callable[[bytes], bytes]) -> int:
        """Size of the derived picture at `key`, drawing it from the original on first request.
        The store is reached as a dependency (with its deadline); only the drawing uses the image pool."""
        try:
            return await self._tx.objects.run(self._store.size, key)
        except ObjectNotFound:
            pass
        original = await self._tx.objects.run(self._store.get_bytes, original_key)
        data = await self._cpu(render, original)
        await self._tx.objects.run(self._store.put_bytes, key, data, content_type)
        return len(data)


@contextlib.contextmanager
def _gone_as_not_found(name: str) -> Iterator[None]:
    """The record was there but its bytes are not: the normal outcome of a read racing DeleteImage,
    which removes the record first and the objects after it."""
    try:
        yield
    except ObjectNotFound:
        raise ServiceError(grpc.StatusCode.NOT_FOUND, f"image {name!r} does not exist (it was deleted while "
                           "being read)", "NOT_FOUND", metadata={"resource": name}) from None


def _variant(row: Row[Any], variant: int) -> tuple[str, str, int, int]:
    if variant in (pb.IMAGE_VARIANT_UNSPECIFIED, pb.IMAGE_VARIANT_ORIGINAL):
        return row.original_key, row.content_type, row.width, row.height
    if variant == pb.IMAGE_VARIANT_CROPPED:
        if not row.crop_key:
            raise failed_precondition("the image has not been cropped yet; run CropImages or set a crop",
                                      "NOT_CROPPED")
        return row.crop_key, "image/png", row.crop_target_width, row.crop_target_height
    if variant == pb.IMAGE_VARIANT_THUMBNAIL:
        scale = min(1.0, 256 / max(row.width, row.height))
        return row.thumbnail_key, "image/webp", round(row.width * scale), round(row.height * scale)
    raise invalid_field("variant", "ORIGINAL, CROPPED or THUMBNAIL")
