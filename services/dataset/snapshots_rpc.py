"""Snapshots: freeze the dataset into a content-addressed manifest."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from kiln.v1 import dataset_pb2 as pb
from services.common import object_keys
from services.common.call_context import current_tenant
from services.common.errors import (
    FieldViolation,
    failed_precondition,
    not_found,
    unary_errors,
)
from services.common.idempotency import check_request_id
from services.common.pagination import page_size
from services.dataset import names, records, schema
from services.dataset.convert import (
    timestamp,
)
from services.dataset.service_base import ServicerBase
from services.dataset.snapshots import Manifest, build_manifest


class SnapshotRpcs(ServicerBase):
    @unary_errors
    async def CreateSnapshot(self, request: pb.CreateSnapshotRequest,
                             context: grpc.aio.ServicerContext) -> pb.Snapshot:
        dataset_id = names.parse_dataset(request.parent, "parent")
        check_request_id(request.request_id)
        tenant = current_tenant()

        def read(conn: Connection) -> Manifest | pb.Snapshot:
            # A retry answers from the record before the manifest is built, checked or written:
            # the dataset may have changed (or emptied) since the first attempt.
            earlier = self._tx.replay(conn, tenant, "CreateSnapshot", request, pb.Snapshot)
            if earlier is not None:
                return earlier
            dataset = records.get_dataset(conn, tenant, dataset_id, lock=True)
            manifest = self._manifest(dataset, records.images_of(conn, dataset_id))
            if manifest.training_count == 0:
                raise failed_precondition("the dataset has no training images to snapshot; upload some first",
                                          "EMPTY_DATASET")
            return manifest

        manifest = await self._tx.run(read)
        if isinstance(manifest, pb.Snapshot):
            return manifest
        key = object_keys.snapshot_manifest_key(dataset_id, manifest.sha256)
        await self._tx.objects.run(self._store.put_bytes, key, manifest.body, "application/json")

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

        return await self._tx.idempotent("CreateSnapshot", request, pb.Snapshot, work)

    def _manifest(self, dataset: Row[Any], images: Sequence[Row[Any]]) -> Manifest:
        """Blocked images stay out. While screening is on, every image must have been screened:
        a snapshot must never carry content nobody checked."""
        if self.tagging is not None:
            _check_screened(dataset, images)
        kept = [r for r in images if r.screening_verdict != "block"]
        return build_manifest(dataset, kept, blocked_count=len(images) - len(kept))

    @unary_errors
    async def GetSnapshot(self, request: pb.GetSnapshotRequest, context: grpc.aio.ServicerContext) -> pb.Snapshot:
        dataset_id, sha256 = names.parse_snapshot(request.name)
        tenant = current_tenant()

        def read(conn: Connection) -> pb.Snapshot:
            records.get_dataset(conn, tenant, dataset_id)
            s = schema.snapshots.c
            row = conn.execute(sa.select(schema.snapshots).where(s.dataset_id == dataset_id,
                                                                 s.sha256 == sha256)).first()
            if row is None:
                raise not_found(request.name, "snapshot")
            return _snapshot_message(row)

        return await self._tx.run(read, read_only=True)

    @unary_errors
    async def ListSnapshots(self, request: pb.ListSnapshotsRequest,
                            context: grpc.aio.ServicerContext) -> pb.ListSnapshotsResponse:
        dataset_id = names.parse_dataset(request.parent, "parent")
        tenant = current_tenant()
        size = page_size(request.page_size, 20, 100)
        query_key = f"snapshots:{tenant}:{dataset_id}"
        s = schema.snapshots.c

        def read(conn: Connection) -> pb.ListSnapshotsResponse:
            records.get_dataset(conn, tenant, dataset_id)
            rows, token = self._page_tokens.keyset_page(
                conn, sa.select(schema.snapshots).where(s.dataset_id == dataset_id), s.create_time, s.sha256,
                request.page_token, size, query_key)
            return pb.ListSnapshotsResponse(snapshots=[_snapshot_message(r) for r in rows], next_page_token=token)

        return await self._tx.run(read, read_only=True)


# `skipped`: uploaded while no tagger was configured. The tagging worker queues them when it
# starts; until they are screened they hold snapshots back like any other unscreened image.
_UNSCREENED_STATES = ("pending", "failed", "skipped")


def _check_screened(dataset: Row[Any], images: Sequence[Row[Any]]) -> None:
    unscreened = [r for r in images if r.tagging_state in _UNSCREENED_STATES and not r.screening_verdict]
    if not unscreened:
        return
    failed = sum(r.tagging_state == "failed" for r in unscreened)
    skipped = sum(r.tagging_state == "skipped" for r in unscreened)
    raise failed_precondition(
        f"{len(unscreened)} images are not screened yet ({failed} failed, {skipped} uploaded before a tagger was "
        "configured); wait for tagging to finish, RetagImages the failed and the never screened ones (merge "
        "IGNORE keeps their captions) or delete them", "SCREENING_INCOMPLETE",
        [FieldViolation("parent", f"datasets/{dataset.id}/images/{r.id} is not screened yet"
                        + (" (uploaded before a tagger was configured)" if r.tagging_state == "skipped" else ""))
         for r in unscreened])  # the status carries the first ones and a count of the rest


def _snapshot_message(row: Row[Any]) -> pb.Snapshot:
    return pb.Snapshot(
        name=names.snapshot_name(row.dataset_id, row.sha256), sha256=row.sha256,
        training_image_count=row.training_image_count, regularization_image_count=row.regularization_image_count,
        total_repeated_images=row.total_repeated_images, create_time=timestamp(row.create_time),
        blocked_image_count=row.blocked_image_count,
    )
