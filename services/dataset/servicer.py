"""The DatasetService gRPC handlers.

Blocking work never runs on the event loop: SQL in a small pool of its own,
decoding and cropping in the image pool, object-store calls in the default
pool. Every write transaction locks its dataset row first, so writers of one
dataset are serialised on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
import sqlalchemy as sa
from google.protobuf.message import Message
from sqlalchemy.engine import Connection, Engine, Row

from kiln.v1 import dataset_pb2 as pb
from kiln.v1 import dataset_pb2_grpc
from services.common.database import READ_ONLY
from services.common.errors import (
    FieldViolation,
    ServiceError,
    already_exists,
    failed_precondition,
    invalid,
    invalid_field,
    not_found,
    parsed,
    resource_exhausted,
    stream_errors,
    unary_errors,
)
from services.common.idempotency import IdempotencyKeys, check_request_id, request_fingerprint
from services.common.objectstore import ObjectNotFound, ObjectStore
from services.common.pagination import keyset_page, page_size
from services.common.tenancy import tenant_of
from services.dataset import captions, names, records, schema
from services.dataset.autotag import TaggingWorker
from services.dataset.convert import (
    CROP_MODE_TO_DB,
    CROP_SIZES,
    FAMILY_TO_DB,
    MERGE_TO_DB,
    ROLE_FROM_DB,
    ROLE_TO_DB,
    dataset_message,
    image_message,
    timestamp,
)
from services.dataset.crop_render import (
    CropResult,
    choose_box,
    crop_result,
    ensure_rendered,
    ensure_thumbnail,
    is_crop_warning,
    upscale_warning,
)
from services.dataset.cropping import Box, Detector
from services.dataset.filenames import safe_filename
from services.dataset.image_check import CheckedImage, ImageLimits, check_image, sniff_format
from services.dataset.settings import DatasetSettings
from services.dataset.snapshots import Manifest, build_manifest
from services.dataset.tagger_client import options_to_dict

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_REPEAT = 1000
READ_CHUNK = 1024 * 1024
MAX_BATCH = 1000
DATASET_FIELDS = {"display_name", "description", "default_repeat"}
IMAGE_FIELDS = {"tags", "repeat", "crop"}


class DatasetServicer(dataset_pb2_grpc.DatasetServiceServicer):
    def __init__(self, engine: Engine, store: ObjectStore, settings: DatasetSettings,
                 detector: Detector | None, tagging: TaggingWorker | None = None) -> None:
        self._engine = engine
        self.tagging = tagging
        self._store = store
        self._settings = settings
        self._detector = detector
        self._keys = IdempotencyKeys(schema.request_ids)
        self._db_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="dataset-db")
        self._image_pool = ThreadPoolExecutor(max_workers=settings.image_workers, thread_name_prefix="dataset-img")
        self._limits = ImageLimits(settings.max_upload_bytes, settings.max_image_pixels, settings.min_image_side)

    def close(self) -> None:
        self._db_pool.shutdown(wait=False, cancel_futures=True)
        self._image_pool.shutdown(wait=False, cancel_futures=True)

    # ---- plumbing -------------------------------------------------------------------------------------------

    async def run_db(self, work: Callable[[Connection], T]) -> T:
        """Run `work` in one transaction on the SQL thread pool (for the background workers too)."""
        return await self._db(work)

    async def _db(self, work: Callable[[Connection], T], *, read_only: bool = False) -> T:
        def run() -> T:
            # A unique-key race (two retries of one request at once) rolls back; the
            # second attempt then sees the winner's record and answers like a retry.
            for attempt in range(2):
                try:
                    with self._engine.connect() as conn:
                        if read_only:
                            conn.execution_options(**READ_ONLY)
                        with conn.begin():
                            return work(conn)
                except sa.exc.IntegrityError:
                    if attempt:
                        raise
            raise AssertionError("unreachable")

        return await asyncio.get_running_loop().run_in_executor(self._db_pool, run)

    async def _cpu(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._image_pool, fn, *args)

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    async def _idempotent(self, context: grpc.aio.ServicerContext, method: str, request: Message,
                          response_type: type[Message], work: Callable[[Connection, str], Message],
                          fingerprint: str | None = None) -> Any:
        tenant = tenant_of(context)
        request_id: str = request.request_id  # type: ignore[attr-defined]
        check_request_id(request_id)
        digest = fingerprint or request_fingerprint(request)

        def transaction(conn: Connection) -> Message:
            earlier = self._keys.replay(conn, tenant, method, request_id, digest, response_type)
            if earlier is not None:
                return earlier
            response = work(conn, tenant)
            self._keys.remember(conn, tenant, method, request_id, digest, response)
            return response

        return await self._db(transaction)

    async def _delete_objects_quietly(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        try:
            await asyncio.shield(self._io(self._store.delete_many, list(keys)))
        except Exception:
            # Orphans cost storage, not correctness; the sweep removes them later.
            log.exception("could not delete objects", extra={"fields": {"keys": list(keys)[:5]}})

    def _dataset_message(self, conn: Connection, row: Row[Any]) -> pb.Dataset:
        return dataset_message(row, records.dataset_counts(conn, row.id, row.default_repeat))

    # ---- datasets -------------------------------------------------------------------------------------------

    @unary_errors
    async def CreateDataset(self, request: pb.CreateDatasetRequest, context: grpc.aio.ServicerContext) -> pb.Dataset:
        spec = request.dataset
        violations = _dataset_violations(spec, creating=True)
        if violations:
            raise invalid(violations)

        def work(conn: Connection, tenant: str) -> pb.Dataset:
            now = records.now()
            dataset_id = names.new_id()
            conn.execute(schema.datasets.insert().values(
                id=dataset_id, tenant=tenant, display_name=spec.display_name.strip(),
                description=spec.description, family=FAMILY_TO_DB[spec.family],
                default_repeat=spec.default_repeat or 1, create_time=now, update_time=now,
            ))
            return self._dataset_message(conn, records.get_dataset(conn, tenant, dataset_id))

        return await self._idempotent(context, "CreateDataset", request, pb.Dataset, work)

    @unary_errors
    async def GetDataset(self, request: pb.GetDatasetRequest, context: grpc.aio.ServicerContext) -> pb.Dataset:
        dataset_id = names.parse_dataset(request.name)
        tenant = tenant_of(context)
        return await self._db(lambda conn: self._dataset_message(conn, records.get_dataset(conn, tenant, dataset_id)),
                              read_only=True)

    @unary_errors
    async def ListDatasets(self, request: pb.ListDatasetsRequest,
                           context: grpc.aio.ServicerContext) -> pb.ListDatasetsResponse:
        tenant = tenant_of(context)
        size = page_size(request.page_size, 20, 100)
        d = schema.datasets.c

        def read(conn: Connection) -> pb.ListDatasetsResponse:
            rows, token = keyset_page(conn, sa.select(schema.datasets).where(d.tenant == tenant), d.create_time,
                                      d.id, request.page_token, size, f"datasets:{tenant}")
            return pb.ListDatasetsResponse(datasets=[self._dataset_message(conn, r) for r in rows],
                                           next_page_token=token)

        return await self._db(read, read_only=True)

    @unary_errors
    async def UpdateDataset(self, request: pb.UpdateDatasetRequest, context: grpc.aio.ServicerContext) -> pb.Dataset:
        dataset_id = names.parse_dataset(request.dataset.name, "dataset.name")
        paths = _mask_paths(request.update_mask.paths, DATASET_FIELDS)
        violations = [v for v in _dataset_violations(request.dataset, creating=False)
                      if v.field.removeprefix("dataset.") in paths]
        if violations:
            raise invalid(violations)
        spec = request.dataset

        def work(conn: Connection, tenant: str) -> pb.Dataset:
            records.get_dataset(conn, tenant, dataset_id, lock=True)
            values: dict[str, Any] = {"update_time": records.now()}
            if "display_name" in paths:
                values["display_name"] = spec.display_name.strip()
            if "description" in paths:
                values["description"] = spec.description
            if "default_repeat" in paths:
                values["default_repeat"] = spec.default_repeat
            conn.execute(schema.datasets.update().where(schema.datasets.c.id == dataset_id).values(**values))
            return self._dataset_message(conn, records.get_dataset(conn, tenant, dataset_id))

        return await self._idempotent(context, "UpdateDataset", request, pb.Dataset, work)

    @unary_errors
    async def DeleteDataset(self, request: pb.DeleteDatasetRequest,
                            context: grpc.aio.ServicerContext) -> pb.DeleteDatasetResponse:
        dataset_id = names.parse_dataset(request.name)

        def work(conn: Connection, tenant: str) -> pb.DeleteDatasetResponse:
            records.get_dataset(conn, tenant, dataset_id, lock=True)
            # Children first: SQLite only cascades when foreign keys are on, and we don't rely on it.
            for table in (schema.snapshot_objects, schema.snapshots, schema.uploads, schema.images):
                conn.execute(table.delete().where(table.c.dataset_id == dataset_id))
            conn.execute(schema.datasets.delete().where(schema.datasets.c.id == dataset_id))
            return pb.DeleteDatasetResponse()

        response = await self._idempotent(context, "DeleteDataset", request, pb.DeleteDatasetResponse, work)
        for prefix in (names.dataset_prefix(dataset_id), names.staging_key(dataset_id, "")):
            try:
                await self._io(self._store.delete_prefix, prefix)
            except Exception:
                log.exception("could not delete objects under %s", prefix)
        return response

    # ---- uploads --------------------------------------------------------------------------------------------

    @unary_errors
    async def UploadImage(self, request_iterator: AsyncIterator[pb.UploadImageRequest],
                          context: grpc.aio.ServicerContext) -> pb.Image:
        meta, data = await self._read_upload(request_iterator)
        dataset_id = names.parse_dataset(meta.parent, "metadata.parent")
        role = _role(meta.role, "metadata.role")
        filename = safe_filename(meta.filename, "metadata.filename")
        tags = captions.validate_tags(meta.tags, "metadata.tags")
        _check_repeat(meta.repeat, "metadata.repeat")
        check_request_id(meta.request_id, "metadata.request_id")
        if meta.size_bytes and meta.size_bytes != len(data):
            raise invalid_field("metadata.size_bytes", f"declared {meta.size_bytes} bytes but {len(data)} arrived",
                                "SIZE_MISMATCH")
        return await self._ingest(context, "UploadImage", meta, dataset_id, role, filename, tags, meta.repeat, data)

    async def _read_upload(self, request_iterator: AsyncIterator[pb.UploadImageRequest]
                           ) -> tuple[pb.UploadImageMetadata, bytes]:
        limit = self._settings.max_upload_bytes
        meta: pb.UploadImageMetadata | None = None
        parts: list[bytes] = []
        received = 0
        async for raw in request_iterator:
            message = parsed(raw)
            kind = message.WhichOneof("content")
            if meta is None:
                if kind != "metadata":
                    raise invalid_field("metadata", "the first message of an upload must carry the metadata",
                                        "METADATA_FIRST")
                meta = message.metadata
                if meta.size_bytes > limit:
                    raise invalid_field("metadata.size_bytes", f"exceeds the {limit}-byte upload limit",
                                        "FILE_TOO_LARGE")
                continue
            if kind != "chunk":
                raise invalid_field("metadata", "metadata may only be sent once, in the first message",
                                    "METADATA_REPEATED")
            received += len(message.chunk)
            if received > limit:
                # Stop reading at once: the rest of a huge upload is never buffered.
                raise invalid_field("chunk", f"the upload exceeds the {limit}-byte limit", "FILE_TOO_LARGE")
            parts.append(message.chunk)
        if meta is None:
            raise invalid_field("metadata", "the upload stream was empty", "METADATA_FIRST")
        return meta, b"".join(parts)

    async def _ingest(self, context: grpc.aio.ServicerContext, method: str, meta: Message, dataset_id: str,
                      role: str, filename: str, tags: list[str], repeat: int, data: bytes,
                      finalize_upload: str | None = None) -> pb.Image:
        tenant = tenant_of(context)
        request_id: str = meta.request_id  # type: ignore[attr-defined]
        sha256 = hashlib.sha256(data).hexdigest()
        fingerprint = hashlib.sha256(request_fingerprint(meta).encode() + sha256.encode()).hexdigest()

        def precheck(conn: Connection) -> pb.Image | None:
            earlier = self._keys.replay(conn, tenant, method, request_id, fingerprint, pb.Image)
            if earlier is not None:
                return earlier
            records.get_dataset(conn, tenant, dataset_id)
            self._check_room(conn, dataset_id, role)
            self._check_duplicate(conn, dataset_id, sha256)
            return None

        image_id = names.new_id()
        original_key = names.original_key(dataset_id, image_id)
        thumbnail_key = names.thumbnail_key(dataset_id, image_id)
        written = [original_key]
        # Most uploads are stored byte for byte, so the original goes to the object
        # store while the request is checked against the records and the bytes are
        # verified; anything rejected is deleted below.
        sniffed = sniff_format(data)
        speculative = (asyncio.ensure_future(self._io(self._store.put_bytes, original_key, data,
                                                      f"image/{sniffed.lower()}"))
                       if sniffed in ("PNG", "JPEG") else None)
        try:
            earlier = await self._db(precheck, read_only=True)
            if earlier is not None:
                raise _Replayed(earlier)
            checked: CheckedImage = await self._cpu(check_image, data, self._limits)
            if speculative is not None:
                await speculative
            if checked.stored_bytes is not data:
                await self._io(self._store.put_bytes, original_key, checked.stored_bytes, checked.content_type)

            def commit(conn: Connection) -> pb.Image:
                earlier = self._keys.replay(conn, tenant, method, request_id, fingerprint, pb.Image)
                if earlier is not None:
                    raise _Replayed(earlier)
                dataset = records.get_dataset(conn, tenant, dataset_id, lock=True)
                self._check_room(conn, dataset_id, role)
                self._check_duplicate(conn, dataset_id, sha256)
                now = records.now()
                conn.execute(schema.images.insert().values(
                    id=image_id, dataset_id=dataset_id, role=role, filename=filename,
                    content_type=checked.content_type, sha256=sha256, size_bytes=len(checked.stored_bytes),
                    width=checked.width, height=checked.height, original_key=original_key,
                    thumbnail_key=thumbnail_key, tags=tags, repeat=repeat, warnings=checked.warnings,
                    create_time=now, update_time=now, tagging_due=now, caption_edited=bool(tags),
                    tagging_state="pending" if self.tagging else "skipped",
                ))
                if finalize_upload:
                    conn.execute(schema.uploads.update().where(schema.uploads.c.id == finalize_upload)
                                 .values(image_id=image_id))
                records.touch_dataset(conn, dataset_id)
                image = image_message(records.get_image(conn, tenant, dataset_id, image_id), dataset.default_repeat)
                self._keys.remember(conn, tenant, method, request_id, fingerprint, image)
                return image

            image = await self._db(commit)
            if self.tagging:
                self.tagging.wake()
            return image
        except _Replayed as replayed:
            if speculative is not None:
                await asyncio.gather(asyncio.shield(speculative), return_exceptions=True)
            await self._delete_objects_quietly(written)
            return replayed.response
        except BaseException:
            if speculative is not None:
                # A PUT still in flight would land after the delete and leave an orphan.
                await asyncio.gather(asyncio.shield(speculative), return_exceptions=True)
            await self._delete_objects_quietly(written)
            raise

    def _check_room(self, conn: Connection, dataset_id: str, role: str) -> None:
        limit = (self._settings.max_training_images if role == records.ROLE_TRAINING
                 else self._settings.max_regularization_images)
        if records.count_by_role(conn, dataset_id, role) >= limit:
            raise resource_exhausted(
                f"the dataset already holds the maximum of {limit} {role} images; delete some before adding more",
                "IMAGE_LIMIT_REACHED", limit=str(limit), role=role,
            )

    def _check_duplicate(self, conn: Connection, dataset_id: str, sha256: str) -> None:
        existing = records.image_by_sha(conn, dataset_id, sha256)
        if existing is not None:
            name = f"datasets/{dataset_id}/images/{existing.id}"
            raise already_exists(f"identical bytes are already in this dataset as {name}", "DUPLICATE_IMAGE",
                                 [FieldViolation("chunk", f"same sha256 as {name}", "DUPLICATE_IMAGE")])

    @unary_errors
    async def CreateImageUpload(self, request: pb.CreateImageUploadRequest,
                                context: grpc.aio.ServicerContext) -> pb.ImageUpload:
        dataset_id = names.parse_dataset(request.parent, "parent")
        role = _role(request.role, "role")
        filename = safe_filename(request.filename, "filename")
        tags = captions.validate_tags(request.tags, "tags")
        _check_repeat(request.repeat, "repeat")
        limit = self._settings.max_upload_bytes
        if not 0 < request.size_bytes <= limit:
            raise invalid_field("size_bytes", f"declare the file size: 1..{limit} bytes", "FILE_TOO_LARGE"
                                if request.size_bytes > limit else "INVALID_ARGUMENT")
        ttl = dt.timedelta(seconds=self._settings.upload_url_ttl_seconds)

        def work(conn: Connection, tenant: str) -> pb.ImageUpload:
            records.get_dataset(conn, tenant, dataset_id, lock=True)
            self._check_room(conn, dataset_id, role)
            upload_id = names.new_id()
            now = records.now()
            expire = now + ttl
            key = names.staging_key(dataset_id, upload_id)
            conn.execute(schema.uploads.insert().values(
                id=upload_id, dataset_id=dataset_id, role=role, filename=filename, size_bytes=request.size_bytes,
                tags=tags, repeat=request.repeat, object_key=key, expire_time=expire, create_time=now,
            ))
            upload = pb.ImageUpload(name=names.upload_name(dataset_id, upload_id),
                                    upload_url=self._store.presigned_put(key, ttl))
            upload.expire_time.FromDatetime(expire)
            return upload

        return await self._idempotent(context, "CreateImageUpload", request, pb.ImageUpload, work)

    @unary_errors
    async def FinalizeImageUpload(self, request: pb.FinalizeImageUploadRequest,
                                  context: grpc.aio.ServicerContext) -> pb.Image:
        dataset_id, upload_id = names.parse_upload(request.name)
        tenant = tenant_of(context)

        def load(conn: Connection) -> tuple[Row[Any], pb.Image | None]:
            records.get_dataset(conn, tenant, dataset_id)
            u = schema.uploads.c
            row = conn.execute(sa.select(schema.uploads).where(u.id == upload_id, u.dataset_id == dataset_id)).first()
            if row is None:
                raise not_found(request.name, "upload")
            image = None
            if row.image_id and records.image_exists(conn, dataset_id, row.image_id):
                image = self._image_message(conn, tenant, dataset_id, row.image_id)
            return row, image

        upload, finished = await self._db(load)
        if finished is not None:
            return finished
        if upload.image_id:
            raise failed_precondition("this upload was finalized and its image has since been deleted",
                                      "UPLOAD_CONSUMED")
        expire = upload.expire_time if upload.expire_time.tzinfo else upload.expire_time.replace(tzinfo=dt.UTC)
        if expire < records.now():
            raise failed_precondition("the upload URL has expired; create a new upload", "UPLOAD_EXPIRED")
        try:
            size = await self._io(self._store.size, upload.object_key)
        except ObjectNotFound:
            raise failed_precondition("no bytes have been PUT to the upload URL yet", "UPLOAD_MISSING") from None
        if size != upload.size_bytes:
            await self._delete_objects_quietly([upload.object_key])
            raise invalid_field("size_bytes", f"declared {upload.size_bytes} bytes but {size} were uploaded; "
                                              "create a new upload", "SIZE_MISMATCH")
        data = await self._io(self._store.get_bytes, upload.object_key)
        meta = pb.UploadImageMetadata(parent=names.dataset_name(dataset_id), filename=upload.filename,
                                      tags=list(upload.tags), repeat=upload.repeat, request_id=request.request_id)
        meta.role = ROLE_FROM_DB[upload.role]
        image = await self._ingest(context, "FinalizeImageUpload", meta, dataset_id, upload.role, upload.filename,
                                   list(upload.tags), upload.repeat, data, finalize_upload=upload_id)
        await self._delete_objects_quietly([upload.object_key])
        return image

    async def sweep_expired_uploads(self) -> int:
        """Remove staging objects and records of uploads that expired unfinished."""
        def expired(conn: Connection) -> list[Row[Any]]:
            u = schema.uploads.c
            return list(conn.execute(sa.select(schema.uploads).where(u.expire_time < records.now())).all())

        rows = await self._db(expired)
        await self._delete_objects_quietly([r.object_key for r in rows])

        def forget(conn: Connection) -> None:
            conn.execute(schema.uploads.delete().where(schema.uploads.c.id.in_([r.id for r in rows])))

        if rows:
            await self._db(forget)
        return len(rows)

    # ---- images ---------------------------------------------------------------------------------------------

    @unary_errors
    async def GetImage(self, request: pb.GetImageRequest, context: grpc.aio.ServicerContext) -> pb.Image:
        image = names.parse_image(request.name)
        tenant = tenant_of(context)
        return await self._db(lambda conn: self._image_message(conn, tenant, image.dataset_id, image.image_id),
                              read_only=True)

    def _image_message(self, conn: Connection, tenant: str, dataset_id: str, image_id: str) -> pb.Image:
        dataset = records.get_dataset(conn, tenant, dataset_id)
        return image_message(records.get_image(conn, tenant, dataset_id, image_id), dataset.default_repeat)

    @unary_errors
    async def ListImages(self, request: pb.ListImagesRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListImagesResponse:
        dataset_id = names.parse_dataset(request.parent, "parent")
        tenant = tenant_of(context)
        role = ROLE_TO_DB.get(request.role) if request.role else None
        if request.role and role is None:
            raise invalid_field("role", "unknown role")
        size = page_size(request.page_size, 100, 1000)
        query_key = f"images:{tenant}:{dataset_id}:{role}"
        i = schema.images.c

        def read(conn: Connection) -> pb.ListImagesResponse:
            dataset = records.get_dataset(conn, tenant, dataset_id)
            where = [i.dataset_id == dataset_id, *([i.role == role] if role else [])]
            total = conn.execute(sa.select(sa.func.count()).where(*where)).scalar_one()
            rows, token = keyset_page(conn, sa.select(schema.images).where(*where), i.create_time, i.id,
                                      request.page_token, size, query_key)
            return pb.ListImagesResponse(images=[image_message(r, dataset.default_repeat) for r in rows],
                                         total_size=total, next_page_token=token)

        return await self._db(read, read_only=True)

    @unary_errors
    async def UpdateImage(self, request: pb.UpdateImageRequest, context: grpc.aio.ServicerContext) -> pb.Image:
        target = names.parse_image(request.image.name, "image.name")
        paths = _mask_paths(request.update_mask.paths, IMAGE_FIELDS)
        spec = request.image
        tags = captions.validate_tags(spec.tags, "image.tags") if "tags" in paths else None
        if "repeat" in paths:
            _check_repeat(spec.repeat, "image.repeat")
        crop: CropResult | None = None
        if "crop" in paths:
            crop = await self._manual_crop(context, target, spec.crop)
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
                values.update(_crop_values(row, crop))
                doomed.extend(self._stale_crop(row, crop.key))
            records.update_image(conn, target.image_id, **values)
            records.touch_dataset(conn, target.dataset_id)
            return self._image_message(conn, tenant, target.dataset_id, target.image_id)

        image = await self._idempotent(context, "UpdateImage", request, pb.Image, work)
        await self._delete_objects_quietly(doomed)
        return image

    async def _manual_crop(self, context: grpc.aio.ServicerContext, target: names.ImageName,
                           crop: pb.Crop) -> CropResult:
        tenant = tenant_of(context)

        def load(conn: Connection) -> tuple[Row[Any], Row[Any]]:
            return (records.get_dataset(conn, tenant, target.dataset_id),
                    records.get_image(conn, tenant, target.dataset_id, target.image_id))

        dataset, row = await self._db(load)
        _check_target_size(dataset.family, crop.target_width, crop.target_height, "image.crop")
        box = Box(crop.box.left, crop.box.top, crop.box.width, crop.box.height)
        if not box.fits(row.width, row.height):
            raise invalid_field("image.crop.box", f"the box must lie inside the {row.width}x{row.height} image")
        if crop.mode not in (pb.CROP_MODE_UNSPECIFIED, pb.CROP_MODE_MANUAL):
            raise invalid_field("image.crop.mode", "only MANUAL crops are set by hand; use CropImages for the others")
        return crop_result(target.dataset_id, target.image_id, box, crop.target_width, crop.target_height, "manual")

    @staticmethod
    def _stale_crop(row: Row[Any], new_key: str) -> list[str]:
        """The cached render of the replaced crop (snapshots never read renders)."""
        return [row.crop_key] if row.crop_key and row.crop_key != new_key else []

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

        response = await self._idempotent(context, "DeleteImage", request, pb.DeleteImageResponse, work)
        await self._delete_objects_quietly(doomed)
        return response

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
        image_ids = _child_ids(request.names, dataset_id, required=True)
        doomed: list[str] = []

        def work(conn: Connection, tenant: str) -> pb.BatchDeleteImagesResponse:
            records.get_dataset(conn, tenant, dataset_id, lock=True)
            rows = records.images_of(conn, dataset_id, image_ids)
            _require_all(rows, image_ids, dataset_id)
            doomed[:] = self._delete_rows(conn, dataset_id, rows)
            return pb.BatchDeleteImagesResponse(deleted_count=len(rows))

        response = await self._idempotent(context, "BatchDeleteImages", request, pb.BatchDeleteImagesResponse,
                                          work)
        await self._delete_objects_quietly(doomed)
        return response

    @stream_errors
    async def ReadImage(self, request: pb.ReadImageRequest,
                        context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ReadImageResponse]:
        target = names.parse_image(request.name)
        tenant = tenant_of(context)
        row = await self._db(lambda conn: records.get_image(conn, tenant, target.dataset_id, target.image_id),
                             read_only=True)
        key, content_type, width, height = _variant(row, request.variant)
        await self._render_derived(row, request.variant)
        size = await self._io(self._store.size, key)
        yield pb.ReadImageResponse(metadata=pb.ReadImageMetadata(
            content_type=content_type, size_bytes=size, width=width, height=height))
        chunks = await self._io(lambda: list(self._store.iter_chunks(key, READ_CHUNK)))
        for chunk in chunks:
            yield pb.ReadImageResponse(chunk=chunk)

    @unary_errors
    async def GetImageUrl(self, request: pb.GetImageUrlRequest,
                          context: grpc.aio.ServicerContext) -> pb.GetImageUrlResponse:
        target = names.parse_image(request.name)
        tenant = tenant_of(context)
        ttl_seconds = request.ttl_seconds or 3600
        if not 1 <= ttl_seconds <= 7 * 24 * 3600:
            raise invalid_field("ttl_seconds", "1..604800 seconds (S3 presigned URLs last at most 7 days)")
        row = await self._db(lambda conn: records.get_image(conn, tenant, target.dataset_id, target.image_id),
                             read_only=True)
        key, *_ = _variant(row, request.variant)
        await self._render_derived(row, request.variant)
        ttl = dt.timedelta(seconds=ttl_seconds)
        response = pb.GetImageUrlResponse(url=await self._io(self._store.presigned_get, key, ttl))
        response.expire_time.FromDatetime(records.now() + ttl)
        return response

    async def _render_derived(self, row: Row[Any], variant: int) -> None:
        if variant == pb.IMAGE_VARIANT_THUMBNAIL:
            await self._cpu(ensure_thumbnail, self._store, row.original_key, row.thumbnail_key)
        elif variant == pb.IMAGE_VARIANT_CROPPED:
            result = crop_result(row.dataset_id, row.id, Box(row.crop_left, row.crop_top, row.crop_width,
                                                             row.crop_height),
                                 row.crop_target_width, row.crop_target_height, row.crop_mode)
            await self._cpu(ensure_rendered, self._store, row.original_key, result)

    # ---- cropping -------------------------------------------------------------------------------------------

    @stream_errors
    async def CropImages(self, request: pb.CropImagesRequest,
                         context: grpc.aio.ServicerContext) -> AsyncIterator[pb.CropImagesResponse]:
        dataset_id = names.parse_dataset(request.parent, "parent")
        tenant = tenant_of(context)
        check_request_id(request.request_id)
        if request.mode not in (pb.CROP_MODE_FOCUS, pb.CROP_MODE_CENTER):
            raise invalid_field("mode", "FOCUS or CENTER (set a MANUAL box with UpdateImage)")
        image_ids = _child_ids(request.names, dataset_id, required=False)
        mode = CROP_MODE_TO_DB[request.mode]

        def load(conn: Connection) -> tuple[Row[Any], list[Row[Any]]]:
            dataset = records.get_dataset(conn, tenant, dataset_id)
            rows = records.images_of(conn, dataset_id, image_ids or None)
            if image_ids:
                _require_all(rows, image_ids, dataset_id)
            return dataset, rows

        dataset, rows = await self._db(load)
        _check_target_size(dataset.family, request.target_width, request.target_height, "")
        total = len(rows)
        upscaled = 0
        done = 0
        # Bounded fan-out: enough in flight to keep the image pool and the store busy.
        pending: set[asyncio.Task[pb.Image]] = set()
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
                    upscaled += int(image.crop.upscaled)
                    yield pb.CropImagesResponse(done=done, total=total, image=image, upscaled_count=upscaled)
        finally:
            for task in pending:
                task.cancel()
        yield pb.CropImagesResponse(done=done, total=total, upscaled_count=upscaled)

    async def _crop_one(self, tenant: str, dataset_id: str, row: Row[Any], mode: str,
                        target_width: int, target_height: int) -> pb.Image:
        if mode == "focus":
            original = await self._io(self._store.get_bytes, row.original_key)
            box = await self._cpu(choose_box, original, row.width, row.height, mode, target_width, target_height,
                                  self._detector)
        else:
            box = choose_box(b"", row.width, row.height, mode, target_width, target_height, None)
        result = crop_result(dataset_id, row.id, box, target_width, target_height, mode)

        def commit(conn: Connection) -> tuple[pb.Image, list[str]]:
            records.get_dataset(conn, tenant, dataset_id, lock=True)
            current = records.get_image(conn, tenant, dataset_id, row.id)
            stale = self._stale_crop(current, result.key)
            records.update_image(conn, row.id, **_crop_values(current, result))
            return self._image_message(conn, tenant, dataset_id, row.id), stale

        image, stale = await self._db(commit)
        await self._delete_objects_quietly(stale)
        return image

    # ---- captions -------------------------------------------------------------------------------------------

    @unary_errors
    async def AddImageTags(self, request: pb.AddImageTagsRequest, context: grpc.aio.ServicerContext) -> pb.Image:
        target = names.parse_image(request.name)
        new = captions.validate_tags(request.tags, "tags")
        if not new:
            raise invalid_field("tags", "give at least one tag")
        at_head = request.position == pb.TAG_POSITION_HEAD
        return await self._edit_tags(context, "AddImageTags", request, target,
                                     lambda tags: captions.add_tags(tags, new, at_head))

    @unary_errors
    async def RemoveImageTags(self, request: pb.RemoveImageTagsRequest,
                              context: grpc.aio.ServicerContext) -> pb.Image:
        target = names.parse_image(request.name)
        unwanted = captions.validate_tags(request.tags, "tags", allow_duplicates=True)
        return await self._edit_tags(context, "RemoveImageTags", request, target,
                                     lambda tags: captions.remove_tags(tags, unwanted))

    async def _edit_tags(self, context: grpc.aio.ServicerContext, method: str, request: Message,
                         target: names.ImageName, edit: Callable[[list[str]], list[str]]) -> pb.Image:
        def work(conn: Connection, tenant: str) -> pb.Image:
            records.get_dataset(conn, tenant, target.dataset_id, lock=True)
            row = records.get_image(conn, tenant, target.dataset_id, target.image_id)
            tags = edit(list(row.tags))
            captions.check_caption_size(tags, "tags")
            if tags != list(row.tags):
                records.update_image(conn, row.id, tags=tags, caption_edited=True)
            return self._image_message(conn, tenant, target.dataset_id, target.image_id)

        return await self._idempotent(context, method, request, pb.Image, work)

    @unary_errors
    async def BatchEditTags(self, request: pb.BatchEditTagsRequest,
                            context: grpc.aio.ServicerContext) -> pb.BatchEditTagsResponse:
        dataset_id = names.parse_dataset(request.parent, "parent")
        image_ids = _child_ids(request.names, dataset_id, required=False)
        edit = _batch_edit(request)

        def work(conn: Connection, tenant: str) -> pb.BatchEditTagsResponse:
            records.get_dataset(conn, tenant, dataset_id, lock=True)
            rows = records.images_of(conn, dataset_id, image_ids or None)
            if image_ids:
                _require_all(rows, image_ids, dataset_id)
            changed = 0
            for row in rows:
                tags = edit(list(row.tags))
                if tags != list(row.tags):
                    captions.check_caption_size(tags, f"image {row.id}")
                    records.update_image(conn, row.id, tags=tags, caption_edited=True)
                    changed += 1
            if changed:
                records.touch_dataset(conn, dataset_id)
            return pb.BatchEditTagsResponse(changed_count=changed)

        return await self._idempotent(context, "BatchEditTags", request, pb.BatchEditTagsResponse, work)

    @unary_errors
    async def RetagImages(self, request: pb.RetagImagesRequest,
                          context: grpc.aio.ServicerContext) -> pb.RetagImagesResponse:
        dataset_id = names.parse_dataset(request.parent, "parent")
        image_ids = _child_ids(request.names, dataset_id, required=False)
        merge = MERGE_TO_DB.get(request.merge)  # type: ignore[call-overload]
        if merge is None:
            raise invalid_field("merge", "say how new tags meet the caption: IGNORE, APPEND or OVERWRITE")
        if request.tagger and not request.tagger.startswith("taggers/"):
            raise invalid_field("tagger", "a tagger name: taggers/{tagger}, or empty for the preferred one")
        if self.tagging is None:
            raise failed_precondition("this dataset service has no tagger configured (KILN_TAGGER_ADDRESS)",
                                      "TAGGING_DISABLED")
        tagging_request = {"tagger": request.tagger, "options": options_to_dict(request.options), "merge": merge}

        def work(conn: Connection, tenant: str) -> pb.RetagImagesResponse:
            records.get_dataset(conn, tenant, dataset_id, lock=True)
            rows = records.images_of(conn, dataset_id, image_ids or None)
            if image_ids:
                _require_all(rows, image_ids, dataset_id)
            if rows:
                conn.execute(schema.images.update().where(schema.images.c.id.in_([r.id for r in rows])).values(
                    tagging_state="pending", tagging_due=records.now(), tagging_attempts=0, tagging_error=None,
                    tagging_request=tagging_request, update_time=records.now()))
            return pb.RetagImagesResponse(queued_count=len(rows))

        response = await self._idempotent(context, "RetagImages", request, pb.RetagImagesResponse, work)
        self.tagging.wake()
        return response

    @unary_errors
    async def GetTagStatistics(self, request: pb.GetTagStatisticsRequest,
                               context: grpc.aio.ServicerContext) -> pb.GetTagStatisticsResponse:
        dataset_id = names.parse_dataset(request.parent, "parent")
        tenant = tenant_of(context)
        role = ROLE_TO_DB.get(request.role) if request.role else None

        def read(conn: Connection) -> pb.GetTagStatisticsResponse:
            records.get_dataset(conn, tenant, dataset_id)
            i = schema.images.c
            query = sa.select(i.tags).where(i.dataset_id == dataset_id, *([i.role == role] if role else []))
            all_tags = [list(t) for t in conn.execute(query).scalars()]
            return pb.GetTagStatisticsResponse(
                tags=[pb.TagCount(tag=t, count=c) for t, c in captions.tag_frequencies(all_tags)],
                image_count=len(all_tags),
            )

        return await self._db(read, read_only=True)

    # ---- snapshots ------------------------------------------------------------------------------------------

    @unary_errors
    async def CreateSnapshot(self, request: pb.CreateSnapshotRequest,
                             context: grpc.aio.ServicerContext) -> pb.Snapshot:
        dataset_id = names.parse_dataset(request.parent, "parent")
        tenant = tenant_of(context)

        def read(conn: Connection) -> Manifest:
            dataset = records.get_dataset(conn, tenant, dataset_id, lock=True)
            manifest = self._manifest(dataset, records.images_of(conn, dataset_id))
            if manifest.training_count == 0:
                raise failed_precondition("the dataset has no training images to snapshot; upload some first",
                                          "EMPTY_DATASET")
            return manifest

        manifest = await self._db(read)
        key = names.snapshot_key(dataset_id, manifest.sha256)
        await self._io(self._store.put_bytes, key, manifest.body, "application/json")

        def work(conn: Connection, tenant_: str) -> pb.Snapshot:
            dataset = records.get_dataset(conn, tenant_, dataset_id, lock=True)
            # Between the read and now, an edit may have changed what the manifest names.
            if self._manifest(dataset, records.images_of(conn, dataset_id)).sha256 != manifest.sha256:
                raise failed_precondition("the dataset changed while the snapshot was being written; retry",
                                          "CONCURRENT_EDIT")
            s = schema.snapshots.c
            row = conn.execute(sa.select(schema.snapshots).where(s.dataset_id == dataset_id,
                                                                 s.sha256 == manifest.sha256)).first()
            if row is None:
                conn.execute(schema.snapshots.insert().values(
                    dataset_id=dataset_id, sha256=manifest.sha256, manifest_key=key,
                    training_image_count=manifest.training_count,
                    regularization_image_count=manifest.regularization_count,
                    total_repeated_images=manifest.total_repeated, create_time=records.now(),
                    blocked_image_count=manifest.blocked_count,
                ))
                conn.execute(schema.snapshot_objects.insert(), [
                    {"dataset_id": dataset_id, "sha256": manifest.sha256, "object_key": k}
                    for k in dict.fromkeys(manifest.object_keys)
                ])
                row = conn.execute(sa.select(schema.snapshots).where(s.dataset_id == dataset_id,
                                                                     s.sha256 == manifest.sha256)).one()
            return _snapshot_message(row)

        return await self._idempotent(context, "CreateSnapshot", request, pb.Snapshot, work)

    def _manifest(self, dataset: Row[Any], images: Sequence[Row[Any]]) -> Manifest:
        """Blocked images stay out. While screening is on, every image must have been screened:
        a snapshot must never carry content nobody checked."""
        if self.tagging is not None:
            unscreened = [r for r in images if r.tagging_state in ("pending", "failed") and not r.screening_verdict]
            if unscreened:
                failed = sum(r.tagging_state == "failed" for r in unscreened)
                raise failed_precondition(
                    f"{len(unscreened)} images are not screened yet ({failed} failed); wait for tagging to finish, "
                    "RetagImages the failed ones or delete them", "SCREENING_INCOMPLETE",
                    [FieldViolation("parent", f"datasets/{dataset.id}/images/{r.id} is not screened yet")
                     for r in unscreened[:20]])
        kept = [r for r in images if r.screening_verdict != "block"]
        return build_manifest(dataset, kept, blocked_count=len(images) - len(kept))

    @unary_errors
    async def GetSnapshot(self, request: pb.GetSnapshotRequest, context: grpc.aio.ServicerContext) -> pb.Snapshot:
        dataset_id, sha256 = names.parse_snapshot(request.name)
        tenant = tenant_of(context)

        def read(conn: Connection) -> pb.Snapshot:
            records.get_dataset(conn, tenant, dataset_id)
            s = schema.snapshots.c
            row = conn.execute(sa.select(schema.snapshots).where(s.dataset_id == dataset_id,
                                                                 s.sha256 == sha256)).first()
            if row is None:
                raise not_found(request.name, "snapshot")
            return _snapshot_message(row)

        return await self._db(read, read_only=True)

    @unary_errors
    async def ListSnapshots(self, request: pb.ListSnapshotsRequest,
                            context: grpc.aio.ServicerContext) -> pb.ListSnapshotsResponse:
        dataset_id = names.parse_dataset(request.parent, "parent")
        tenant = tenant_of(context)
        size = page_size(request.page_size, 20, 100)
        query_key = f"snapshots:{tenant}:{dataset_id}"
        s = schema.snapshots.c

        def read(conn: Connection) -> pb.ListSnapshotsResponse:
            records.get_dataset(conn, tenant, dataset_id)
            rows, token = keyset_page(conn, sa.select(schema.snapshots).where(s.dataset_id == dataset_id),
                                      s.create_time, s.sha256, request.page_token, size, query_key)
            return pb.ListSnapshotsResponse(snapshots=[_snapshot_message(r) for r in rows], next_page_token=token)

        return await self._db(read, read_only=True)


class _Replayed(Exception):
    def __init__(self, response: pb.Image) -> None:
        super().__init__("replayed")
        self.response = response


def _dataset_violations(spec: pb.Dataset, creating: bool) -> list[FieldViolation]:
    violations = []
    name = spec.display_name.strip()
    if not name or len(name) > 200 or not name.isprintable():
        violations.append(FieldViolation("dataset.display_name", "1..200 printable characters"))
    if len(spec.description) > 5000:
        violations.append(FieldViolation("dataset.description", "at most 5000 characters"))
    if creating and spec.family not in FAMILY_TO_DB:
        violations.append(FieldViolation("dataset.family", "MODEL_FAMILY_SD15 or MODEL_FAMILY_SDXL"))
    if not (0 if creating else 1) <= spec.default_repeat <= MAX_REPEAT:
        violations.append(FieldViolation("dataset.default_repeat", f"1..{MAX_REPEAT}"))
    return violations


def _mask_paths(paths: Sequence[str], allowed: set[str]) -> set[str]:
    if not paths:
        raise invalid_field("update_mask", f"list the fields to change: {', '.join(sorted(allowed))}")
    unknown = [p for p in paths if p not in allowed]
    if unknown:
        raise invalid([FieldViolation("update_mask", f"{p!r} cannot be updated; updatable: "
                                                     f"{', '.join(sorted(allowed))}") for p in unknown])
    return set(paths)


def _role(value: int, field: str) -> str:
    role = ROLE_TO_DB.get(value)  # type: ignore[call-overload]
    if role is None:
        raise invalid_field(field, "IMAGE_ROLE_TRAINING or IMAGE_ROLE_REGULARIZATION")
    return role


def _check_repeat(value: int, field: str) -> None:
    if not 0 <= value <= MAX_REPEAT:
        raise invalid_field(field, f"0 (use the dataset default) to {MAX_REPEAT}")


def _check_target_size(family: str, width: int, height: int, prefix: str) -> None:
    family_enum = {v: k for k, v in FAMILY_TO_DB.items()}[family]
    sizes = CROP_SIZES[family_enum]
    if (width, height) not in sizes:
        allowed = ", ".join(f"{w}x{h}" for w, h in sizes)
        field = f"{prefix}." if prefix else ""
        raise invalid([
            FieldViolation(f"{field}target_width", f"{width}x{height} is not a {family} crop size; use {allowed}"),
            FieldViolation(f"{field}target_height", f"{width}x{height} is not a {family} crop size; use {allowed}"),
        ])


def _child_ids(image_names: Sequence[str], dataset_id: str, required: bool) -> list[str]:
    if required and not image_names:
        raise invalid_field("names", "list at least one image")
    if len(image_names) > MAX_BATCH:
        raise invalid_field("names", f"at most {MAX_BATCH} images per call")
    ids: list[str] = []
    violations = []
    for index, value in enumerate(image_names):
        try:
            parsed_name = names.parse_image(value, f"names[{index}]")
        except ServiceError as err:
            violations.extend(err.violations)
            continue
        if parsed_name.dataset_id != dataset_id:
            violations.append(FieldViolation(f"names[{index}]", "belongs to another dataset than parent"))
            continue
        ids.append(parsed_name.image_id)
    if violations:
        raise invalid(violations)
    return list(dict.fromkeys(ids))


def _require_all(rows: Sequence[Row[Any]], image_ids: Sequence[str], dataset_id: str) -> None:
    found = {r.id for r in rows}
    missing = [i for i in image_ids if i not in found]
    if missing:
        raise not_found(f"datasets/{dataset_id}/images/{missing[0]}", f"image (and {len(missing) - 1} more)"
                        if len(missing) > 1 else "image")


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


def _crop_values(row: Row[Any], crop: CropResult) -> dict[str, Any]:
    notes = [w for w in row.warnings if not is_crop_warning(w)]
    if crop.upscaled:
        notes.append(upscale_warning(crop))
    return {
        "crop_left": crop.box.left, "crop_top": crop.box.top, "crop_width": crop.box.width,
        "crop_height": crop.box.height, "crop_target_width": crop.target_width,
        "crop_target_height": crop.target_height, "crop_mode": crop.mode, "crop_upscaled": crop.upscaled,
        "crop_key": crop.key, "warnings": notes,
    }


def _batch_edit(request: pb.BatchEditTagsRequest) -> Callable[[list[str]], list[str]]:
    kind = request.WhichOneof("edit")
    if kind == "add":
        (tag,) = captions.validate_tags([request.add.tag], "add.tag")
        at_head = request.add.position == pb.TAG_POSITION_HEAD
        return lambda tags: captions.add_tags(tags, [tag], at_head)
    if kind == "remove":
        (tag,) = captions.validate_tags([request.remove.tag], "remove.tag")
        return lambda tags: captions.remove_tags(tags, [tag])
    if kind == "replace":
        (old,) = captions.validate_tags([request.replace.tag], "replace.tag")
        (new,) = captions.validate_tags([request.replace.replacement], "replace.replacement")
        return lambda tags: captions.replace_tag(tags, old, new)
    raise invalid_field("edit", "set one of add, remove or replace")


def _snapshot_message(row: Row[Any]) -> pb.Snapshot:
    return pb.Snapshot(
        name=names.snapshot_name(row.dataset_id, row.sha256), sha256=row.sha256, manifest_key=row.manifest_key,
        training_image_count=row.training_image_count, regularization_image_count=row.regularization_image_count,
        total_repeated_images=row.total_repeated_images, create_time=timestamp(row.create_time),
        blocked_image_count=row.blocked_image_count,
    )
