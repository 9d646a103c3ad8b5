"""Uploads: the client stream, presigned PUT + finalize, and what both share:
verify, store once, record with the limits and dedup checked under the dataset's lock."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import sqlalchemy as sa
from google.protobuf.message import Message
from sqlalchemy.engine import Connection, Row

from kiln.v1 import dataset_pb2 as pb
from services.common.errors import (
    FieldViolation,
    already_exists,
    failed_precondition,
    invalid_field,
    not_found,
    parsed,
    resource_exhausted,
    unary_errors,
)
from services.common.idempotency import check_request_id, request_fingerprint
from services.common.objectstore import ObjectNotFound
from services.common.tenancy import tenant_of
from services.dataset import captions, names, records, schema
from services.dataset.convert import (
    ROLE_FROM_DB,
    image_message,
)
from services.dataset.filenames import safe_filename
from services.dataset.image_check import CheckedImage, check_image, sniff_format
from services.dataset.orphans import cutoff, known_objects, orphans
from services.dataset.requests import (
    check_repeat,
    role_of,
)
from services.dataset.service_base import ServicerBase


class UploadRpcs(ServicerBase):
    @unary_errors
    async def UploadImage(self, request_iterator: AsyncIterator[pb.UploadImageRequest],
                          context: grpc.aio.ServicerContext) -> pb.Image:
        meta, data = await self._read_upload(request_iterator)
        dataset_id = names.parse_dataset(meta.parent, "metadata.parent")
        role = role_of(meta.role, "metadata.role")
        filename = safe_filename(meta.filename, "metadata.filename")
        tags = captions.validate_tags(meta.tags, "metadata.tags")
        check_repeat(meta.repeat, "metadata.repeat")
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
        # Verification doesn't depend on the records either: it runs beside the precheck and
        # the PUT. A precheck that fails still answers first, as it did when they ran in turn.
        verification = asyncio.ensure_future(self._cpu(check_image, data, self._limits))
        verification.add_done_callback(_retrieve_outcome)
        try:
            earlier = await self._db(precheck, read_only=True)
            if earlier is not None:
                raise _Replayed(earlier)
            checked: CheckedImage = await verification
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
                row = conn.execute(schema.images.insert().returning(*schema.images.c).values(
                    id=image_id, dataset_id=dataset_id, role=role, filename=filename,
                    content_type=checked.content_type, sha256=sha256, size_bytes=len(checked.stored_bytes),
                    width=checked.width, height=checked.height, original_key=original_key,
                    thumbnail_key=thumbnail_key, tags=tags, repeat=repeat, warnings=checked.warnings,
                    create_time=now, update_time=now, tagging_due=now, caption_edited=bool(tags),
                    tagging_state="pending" if self.tagging else "skipped",
                )).one()
                if finalize_upload:
                    conn.execute(schema.uploads.update().where(schema.uploads.c.id == finalize_upload)
                                 .values(image_id=image_id))
                records.touch_dataset(conn, dataset_id)
                image = image_message(row, dataset.default_repeat)
                self._keys.remember(conn, tenant, method, request_id, fingerprint, image)
                return image

            image = await self._db(commit)
            if self.tagging:
                self.tagging.wake()
            return image
        except _Replayed as replayed:
            await asyncio.shield(self._discard_after(written, speculative))
            return replayed.response
        except BaseException:
            # Shielded: a client that cancels mid-way must not cancel the clean-up too.
            await asyncio.shield(self._discard_after(written, speculative))
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
        role = role_of(request.role, "role")
        filename = safe_filename(request.filename, "filename")
        tags = captions.validate_tags(request.tags, "tags")
        check_repeat(request.repeat, "repeat")
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

    async def sweep_orphans(self, min_age: dt.timedelta = dt.timedelta(hours=1)) -> int:
        """Delete objects under datasets/ that no record or snapshot points at (see orphans.py)."""
        # Listed before the records are read: an object written after the listing is not judged.
        listing = await self._io(self._store.list_with_times, "datasets/")
        datasets, images, kept = await self._db(known_objects, read_only=True)
        doomed = orphans(listing, datasets, images, kept, cutoff(min_age))
        await self._delete_objects_quietly(doomed)
        return len(doomed)


def _retrieve_outcome(future: asyncio.Future[Any]) -> None:
    """Mark a side task's exception as seen: when an earlier check already failed the request,
    nobody awaits it, and asyncio would log it as never retrieved."""
    if not future.cancelled():
        future.exception()


class _Replayed(Exception):
    def __init__(self, response: pb.Image) -> None:
        super().__init__("replayed")
        self.response = response
