"""Uploads: the client stream, a presigned POST form + finalize, and what both share:
verify, store once, record with the limits and dedup checked under the dataset's lock."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from kiln.v1 import dataset_pb2 as pb
from services.common import object_keys
from services.common.call_context import current_tenant
from services.common.database import utc
from services.common.errors import (
    FieldViolation,
    already_exists,
    failed_precondition,
    invalid_field,
    not_found,
    parsed,
    quota_exceeded,
    unary_errors,
)
from services.common.idempotency import check_request_id, request_fingerprint
from services.common.objectstore import ObjectNotFound, ObjectStore
from services.common.upload_limits import MAX_UPLOAD_CHUNK_BYTES, chunk_too_large
from services.dataset import captions, names, records, schema
from services.dataset.convert import image_message
from services.dataset.filenames import safe_filename
from services.dataset.image_check import CheckedImage, ImageLimits, check_image, sniff_format
from services.dataset.orphans import cutoff, known_objects, orphans
from services.dataset.requests import (
    check_repeat,
    role_of,
)
from services.dataset.service_base import ServicerBase
from services.dataset.staging_sweep import abandoned, recorded_staging_keys

READ_CHUNK = 1024 * 1024
# The sweeps delete what no record names; they may only ever judge this service's prefixes.
SWEEPER = object_keys.Service.DATASET


@dataclass(frozen=True)
class _Ingest:
    """An upload on its way to becoming an image: what it asks for, and how to recognise a retry of it."""

    tenant: str
    method: str
    request_id: str
    # Of the request without its bytes; with `bytes_identify`, the same request_id with other
    # bytes is another request, though its metadata match.
    request_digest: str
    bytes_identify: bool
    dataset_id: str
    role: str
    filename: str
    tags: list[str]
    repeat: int
    finalize_upload: str | None = None
    image_id: str = field(default_factory=names.new_id)
    # Known once the bytes are hashed (beside their verification): of what is stored, and of the upload.
    sha256: str = ""
    upload_sha256: str = ""

    @property
    def original_key(self) -> str:
        return object_keys.original_key(self.dataset_id, self.image_id)

    @property
    def fingerprint(self) -> str:
        if not self.bytes_identify:
            return self.request_digest
        return hashlib.sha256(self.request_digest.encode() + self.upload_sha256.encode()).hexdigest()


class UploadRpcs(ServicerBase):
    @unary_errors
    async def UploadImage(self, request_iterator: AsyncIterator[pb.UploadImageRequest],
                          context: grpc.aio.ServicerContext) -> pb.Image:
        meta, parts = await self._read_upload(request_iterator)
        # Most photos arrive in one chunk; joining tens of MiB would hold the event loop.
        data = parts[0] if len(parts) == 1 else await self._cpu(b"".join, parts)
        dataset_id = names.parse_dataset(meta.parent, "metadata.parent")
        role = role_of(meta.role, "metadata.role")
        filename = safe_filename(meta.filename, "metadata.filename")
        tags = captions.validate_tags(meta.tags, "metadata.tags")
        check_repeat(meta.repeat, "metadata.repeat")
        check_request_id(meta.request_id, "metadata.request_id")
        if meta.size_bytes and meta.size_bytes != len(data):
            raise invalid_field("metadata.size_bytes", f"declared {meta.size_bytes} bytes but {len(data)} arrived",
                                "SIZE_MISMATCH")
        return await self._ingest(_Ingest(
            tenant=current_tenant(), method="UploadImage", request_id=meta.request_id,
            request_digest=request_fingerprint(meta), bytes_identify=True, dataset_id=dataset_id, role=role,
            filename=filename, tags=tags, repeat=meta.repeat), data, context)

    async def _read_upload(self, request_iterator: AsyncIterator[pb.UploadImageRequest]
                           ) -> tuple[pb.UploadImageMetadata, list[bytes]]:
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
                if meta.size_bytes < 0:
                    raise invalid_field("metadata.size_bytes", f"0 (not declared) or the file's size, 1..{limit} bytes",
                                        "OUT_OF_RANGE")
                if meta.size_bytes > limit:
                    raise invalid_field("metadata.size_bytes", f"exceeds the {limit}-byte upload limit",
                                        "FILE_TOO_LARGE")
                continue
            if kind != "chunk":
                raise invalid_field("metadata", "metadata may only be sent once, in the first message",
                                    "METADATA_REPEATED")
            chunk = message.chunk  # each read of a bytes field is a copy of it
            if len(chunk) > MAX_UPLOAD_CHUNK_BYTES:
                raise chunk_too_large(len(chunk))
            received += len(chunk)
            if received > limit:
                # Stop reading at once: the rest of a huge upload is never buffered.
                raise invalid_field("chunk", f"the upload exceeds the {limit}-byte limit", "FILE_TOO_LARGE")
            parts.append(chunk)
        if meta is None:
            raise invalid_field("metadata", "the upload stream was empty", "METADATA_FIRST")
        return meta, parts

    async def _ingest(self, job: _Ingest, data: bytes, context: grpc.aio.ServicerContext) -> pb.Image:
        try:
            checked, sha256, upload_sha256 = await self._store_verified(job, data)
            if context.cancelled():
                # A client that cancels mid-stream can look to the service like one that finished a
                # shorter upload; by now the cancellation has landed, and nothing is recorded.
                await asyncio.shield(self._tx.discard_after([job.original_key], []))
                raise asyncio.CancelledError
            job = dataclasses.replace(job, sha256=sha256, upload_sha256=upload_sha256)
            image = await self._tx.commit(lambda conn: self._record_image(conn, job, checked),
                                          written=[job.original_key])
        except _Replayed as replayed:
            return replayed.response
        if self.tagging:
            self.tagging.wake()
        return image

    async def _store_verified(self, job: _Ingest, data: bytes) -> tuple[CheckedImage, str, str]:
        """Verify and hash the bytes and store the original; returns the check, the original's sha256
        and the upload's. What was stored is deleted again when the bytes are refused or the caller
        goes away (and, by the commit, when the records refuse the upload or an earlier answer is
        replayed)."""
        puts: list[asyncio.Future[None]] = []
        # Most uploads are stored byte for byte, so the original goes to the object store while
        # the bytes are verified and hashed. The records are checked once, in the commit: a
        # check before it could not save the PUT or the decode, which are already under way.
        sniffed = sniff_format(data)
        if sniffed in ("PNG", "JPEG"):
            puts.append(asyncio.ensure_future(self._tx.objects.run(self._store.put_bytes, job.original_key, data,
                                                                   f"image/{sniffed.lower()}")))
        try:
            checked, upload_sha256, sha256 = await self._cpu(_verified_and_hashed, data, self._limits)
            if puts:
                await puts[0]
            if checked.stored_bytes is not data:
                puts.append(asyncio.ensure_future(self._tx.objects.run(self._store.put_bytes, job.original_key,
                                                                       checked.stored_bytes, checked.content_type)))
                await puts[-1]
            return checked, sha256, upload_sha256
        except BaseException:
            # Shielded: a client that cancels mid-way must not cancel the clean-up too.
            await asyncio.shield(self._tx.discard_after([job.original_key], puts))
            raise

    def _check_new(self, conn: Connection, job: _Ingest) -> Row[Any]:
        """The dataset, once the upload is known to be new and to fit; raises _Replayed with the
        answer when an earlier request already made this image."""
        earlier = self._tx.keys.replay(conn, job.tenant, job.method, job.request_id, job.fingerprint, pb.Image)
        if earlier is not None:
            raise _Replayed(earlier)
        dataset = records.get_dataset(conn, job.tenant, job.dataset_id, lock=True)
        if job.finalize_upload is not None:
            # Another finalize of the same upload may have got here first: its image is the answer.
            upload = self._upload_row(conn, job.dataset_id, job.finalize_upload, lock=True)
            finished = self._finalized(conn, job.tenant, upload)
            if finished is not None:
                raise _Replayed(finished)
        self._check_room(conn, job.dataset_id, job.role)
        self._check_duplicate(conn, job.dataset_id, job.sha256)
        return dataset

    def _record_image(self, conn: Connection, job: _Ingest, checked: CheckedImage) -> pb.Image:
        dataset = self._check_new(conn, job)
        now = records.now()
        row = conn.execute(records.INSERT_IMAGE, dict(
            id=job.image_id, dataset_id=job.dataset_id, role=job.role, filename=job.filename,
            content_type=checked.content_type, sha256=job.sha256, upload_sha256=job.upload_sha256,
            size_bytes=len(checked.stored_bytes),
            width=checked.width, height=checked.height, original_key=job.original_key,
            thumbnail_key=object_keys.thumbnail_key(job.dataset_id, job.image_id), tags=job.tags, repeat=job.repeat,
            warnings=checked.warnings, create_time=now, update_time=now, tagging_due=now,
            caption_edited=bool(job.tags), tagging_state="pending" if self.tagging else "skipped",
        )).one()
        if job.finalize_upload:
            conn.execute(schema.uploads.update().where(schema.uploads.c.id == job.finalize_upload)
                         .values(image_id=job.image_id))
        records.touch_dataset(conn, job.dataset_id)
        image = image_message(row, dataset.default_repeat)
        self._tx.keys.remember(conn, job.tenant, job.method, job.request_id, job.fingerprint, image)
        return image

    def _check_room(self, conn: Connection, dataset_id: str, role: str) -> None:
        limit = (self._settings.max_training_images if role == records.ROLE_TRAINING
                 else self._settings.max_regularization_images)
        if records.count_by_role(conn, dataset_id, role) >= limit:
            raise quota_exceeded(
                f"the dataset already holds the maximum of {limit} {role} images; delete some before adding more",
                "IMAGE_LIMIT_REACHED", subject=f"datasets/{dataset_id}",
                description=f"max_{role}_images", limit=str(limit), role=role,
            )

    def _check_duplicate(self, conn: Connection, dataset_id: str, sha256: str) -> None:
        existing = records.image_by_sha(conn, dataset_id, sha256)
        if existing is not None:
            name = f"datasets/{dataset_id}/images/{existing.id}"
            raise already_exists(f"this image is already in this dataset as {name} (the same stored bytes)",
                                 "DUPLICATE_IMAGE",
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
        if request.size_bytes < 1:
            raise invalid_field("size_bytes", f"declare the file's size: 1..{limit} bytes", "OUT_OF_RANGE")
        if request.size_bytes > limit:
            raise invalid_field("size_bytes", f"exceeds the {limit}-byte upload limit", "FILE_TOO_LARGE")
        ttl = dt.timedelta(seconds=self._settings.upload_url_ttl_seconds)

        def work(conn: Connection, tenant: str) -> pb.ImageUpload:
            records.get_dataset(conn, tenant, dataset_id, lock=True)
            self._check_room(conn, dataset_id, role)
            upload_id = names.new_id()
            now = records.now()
            expire = now + ttl
            key = object_keys.staging_key(dataset_id, upload_id)
            conn.execute(schema.uploads.insert().values(
                id=upload_id, dataset_id=dataset_id, role=role, filename=filename, size_bytes=request.size_bytes,
                tags=tags, repeat=request.repeat, object_key=key, expire_time=expire, create_time=now,
            ))
            form = self._store.presigned_post(key, request.size_bytes, expire)
            upload = pb.ImageUpload(name=names.upload_name(dataset_id, upload_id), upload_url=form.url,
                                    upload_fields=form.fields)
            upload.expire_time.FromDatetime(expire)
            return upload

        return await self._tx.idempotent("CreateImageUpload", request, pb.ImageUpload, work)

    @unary_errors
    async def FinalizeImageUpload(self, request: pb.FinalizeImageUploadRequest,
                                  context: grpc.aio.ServicerContext) -> pb.Image:
        dataset_id, upload_id = names.parse_upload(request.name)
        check_request_id(request.request_id)
        tenant = current_tenant()
        # The request names the upload; what was POSTed there is not part of it.

        def load(conn: Connection) -> Row[Any] | pb.Image:
            earlier = self._tx.replay(conn, tenant, "FinalizeImageUpload", request, pb.Image)
            if earlier is not None:
                return earlier
            records.get_dataset(conn, tenant, dataset_id)
            row = self._upload_row(conn, dataset_id, upload_id)
            return self._finalized(conn, tenant, row) or row

        upload = await self._tx.run(load, read_only=True)
        if isinstance(upload, pb.Image):
            return upload
        if utc(upload.expire_time) < records.now():
            raise failed_precondition("the upload form has expired; create a new upload", "UPLOAD_EXPIRED")
        data = await self._staged_bytes(upload)
        image = await self._ingest(_Ingest(
            tenant=tenant, method="FinalizeImageUpload", request_id=request.request_id,
            request_digest=request_fingerprint(request), bytes_identify=False, dataset_id=dataset_id,
            role=upload.role, filename=upload.filename, tags=list(upload.tags), repeat=upload.repeat,
            finalize_upload=upload_id), data, context)
        await self._tx.delete_quietly([upload.object_key])
        return image

    def _upload_row(self, conn: Connection, dataset_id: str, upload_id: str, *, lock: bool = False) -> Row[Any]:
        u = schema.uploads.c
        query = sa.select(schema.uploads).where(u.id == upload_id, u.dataset_id == dataset_id)
        row = conn.execute(query.with_for_update() if lock else query).first()
        if row is None:
            raise not_found(names.upload_name(dataset_id, upload_id), "upload")
        return row

    def _finalized(self, conn: Connection, tenant: str, upload: Row[Any]) -> pb.Image | None:
        """The image the upload became, or None while it waits to be finalized."""
        if not upload.image_id:
            return None
        if not records.image_exists(conn, upload.dataset_id, upload.image_id):
            raise failed_precondition("this upload was finalized and its image has since been deleted",
                                      "UPLOAD_CONSUMED")
        return self._image_message(conn, tenant, upload.dataset_id, upload.image_id)

    async def _staged_bytes(self, upload: Row[Any]) -> bytes:
        """What was POSTed with the upload form, which must be the declared size. The store enforces
        that, yet the form stays usable until it expires and not every S3 checks a policy as
        strictly, so the read stops past that size rather than trust the store or an earlier look."""
        try:
            data = await self._tx.objects.run(_read_at_most, self._store, upload.object_key, upload.size_bytes)
        except ObjectNotFound:
            raise failed_precondition("no bytes have been POSTed with the upload form yet", "UPLOAD_MISSING") from None
        if len(data) != upload.size_bytes:
            await self._tx.delete_quietly([upload.object_key])
            found = f"more than {upload.size_bytes}" if len(data) > upload.size_bytes else str(len(data))
            raise invalid_field("size_bytes", f"declared {upload.size_bytes} bytes but {found} were uploaded; "
                                              "create a new upload", "SIZE_MISMATCH")
        return data

    async def sweep_expired_uploads(self) -> int:
        """Remove staging objects and records of uploads that expired unfinished."""
        def expired(conn: Connection) -> list[Row[Any]]:
            u = schema.uploads.c
            return list(conn.execute(sa.select(schema.uploads).where(u.expire_time < records.now())).all())

        rows = await self._tx.run(expired)
        await self._tx.delete_quietly(object_keys.only_owned(SWEEPER, [r.object_key for r in rows]))

        def forget(conn: Connection) -> None:
            conn.execute(schema.uploads.delete().where(schema.uploads.c.id.in_([r.id for r in rows])))

        if rows:
            await self._tx.run(forget)
        return len(rows)

    async def sweep_orphans(self, min_age: dt.timedelta = dt.timedelta(hours=1)) -> int:
        """Delete objects under datasets/ that no record or snapshot points at (see orphans.py)."""
        # Listed before the records are read: an object written after the listing is not judged.
        listing = await self._tx.objects.run(self._store.list_with_times, object_keys.DATASETS)
        datasets, images, kept = await self._tx.run(known_objects, read_only=True)
        doomed = orphans(listing, datasets, images, kept, cutoff(min_age))
        await self._tx.delete_quietly(doomed)
        return len(doomed)

    async def sweep_abandoned_staging(self, min_age: dt.timedelta | None = None) -> int:
        """Delete staging objects no upload record names (see staging_sweep.py), once older than an
        upload form lives (default), when no form can write them any more."""
        if min_age is None:
            min_age = dt.timedelta(seconds=self._settings.upload_url_ttl_seconds)
        # Listed before the records are read. An object exists only after its form was handed out,
        # which is after its record was committed, so a record missing now is gone for good.
        listing = await self._tx.objects.run(self._store.list_with_times, object_keys.UPLOADS)
        recorded = await self._tx.run(recorded_staging_keys, read_only=True)
        doomed = abandoned(listing, recorded, cutoff(min_age))
        await self._tx.delete_quietly(doomed)
        return len(doomed)


def _verified_and_hashed(data: bytes, limits: ImageLimits) -> tuple[CheckedImage, str, str]:
    """The check, the sha256 of the upload (which tells a retry from another request) and of what is
    stored (the image's sha256, which duplicates are found by). One trip to the image pool for all:
    hashing releases the GIL, and so does most of decoding."""
    checked = check_image(data, limits)
    uploaded = hashlib.sha256(data).hexdigest()
    stored = uploaded if checked.stored_bytes is data else hashlib.sha256(checked.stored_bytes).hexdigest()
    return checked, uploaded, stored


def _read_at_most(store: ObjectStore, key: str, limit: int) -> bytes:
    """The object's bytes, cut off once more than `limit` have arrived."""
    parts: list[bytes] = []
    received = 0
    with contextlib.closing(store.iter_chunks(key, READ_CHUNK)) as chunks:
        for chunk in chunks:
            parts.append(chunk)
            received += len(chunk)
            if received > limit:
                break
    return b"".join(parts)


class _Replayed(Exception):
    def __init__(self, response: pb.Image) -> None:
        super().__init__("replayed")
        self.response = response
