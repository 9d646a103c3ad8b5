"""Datasets: create, get, list, update with a field mask, delete."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from kiln.v1 import dataset_pb2 as pb
from services.common import object_keys
from services.common.call_context import current_tenant
from services.common.errors import (
    FieldViolation,
    invalid,
    unary_errors,
)
from services.common.pagination import page_size
from services.dataset import names, records, schema
from services.dataset.convert import (
    FAMILY_TO_DB,
    dataset_message,
)
from services.dataset.requests import (
    MAX_DEFAULT_REPEAT,
    mask_paths,
    text_problem,
)
from services.dataset.service_base import ServicerBase

log = logging.getLogger(__name__)

DATASET_FIELDS = {"display_name", "description", "default_repeat"}
MAX_DESCRIPTION_LENGTH = 5000


class DatasetRpcs(ServicerBase):
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

        return await self._tx.idempotent("CreateDataset", request, pb.Dataset, work)

    @unary_errors
    async def GetDataset(self, request: pb.GetDatasetRequest, context: grpc.aio.ServicerContext) -> pb.Dataset:
        dataset_id = names.parse_dataset(request.name)
        tenant = current_tenant()
        return await self._tx.run(
            lambda conn: self._dataset_message(conn, records.get_dataset(conn, tenant, dataset_id)), read_only=True)

    @unary_errors
    async def ListDatasets(self, request: pb.ListDatasetsRequest,
                           context: grpc.aio.ServicerContext) -> pb.ListDatasetsResponse:
        tenant = current_tenant()
        size = page_size(request.page_size, 20, 100)
        d = schema.datasets.c

        def read(conn: Connection) -> pb.ListDatasetsResponse:
            rows, token = self._page_tokens.keyset_page(
                conn, sa.select(schema.datasets).where(d.tenant == tenant), d.create_time, d.id, request.page_token,
                size, f"datasets:{tenant}")
            counts = records.dataset_counts(conn, rows)
            return pb.ListDatasetsResponse(datasets=[dataset_message(r, counts[r.id], self._set_limits) for r in rows],
                                           next_page_token=token)

        return await self._tx.run(read, read_only=True)

    @unary_errors
    async def UpdateDataset(self, request: pb.UpdateDatasetRequest, context: grpc.aio.ServicerContext) -> pb.Dataset:
        dataset_id = names.parse_dataset(request.dataset.name, "dataset.name")
        paths = mask_paths(request.update_mask.paths, DATASET_FIELDS)
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

        return await self._tx.idempotent("UpdateDataset", request, pb.Dataset, work)

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

        response = await self._tx.idempotent("DeleteDataset", request, pb.DeleteDatasetResponse, work)
        for prefix in (object_keys.dataset_prefix(dataset_id), object_keys.staging_prefix(dataset_id)):
            try:
                await self._tx.objects.run(self._store.delete_prefix, prefix)
            except Exception:
                log.exception("could not delete objects under %s", prefix)
        return response


def _dataset_violations(spec: pb.Dataset, creating: bool) -> list[FieldViolation]:
    violations = []
    name = spec.display_name.strip()
    if not name or len(name) > 200 or not name.isprintable():
        violations.append(FieldViolation("dataset.display_name", "1..200 printable characters", "INVALID_NAME"))
    problem = text_problem(spec.description, MAX_DESCRIPTION_LENGTH)
    if problem:
        violations.append(FieldViolation("dataset.description", problem, "INVALID_DESCRIPTION"))
    if creating and spec.family not in FAMILY_TO_DB:
        violations.append(FieldViolation("dataset.family", "MODEL_FAMILY_SD15 or MODEL_FAMILY_SDXL", "INVALID_FAMILY"))
    # 0 on create takes the default of 1.
    if not (0 if creating else 1) <= spec.default_repeat <= MAX_DEFAULT_REPEAT:
        violations.append(FieldViolation("dataset.default_repeat", f"1..{MAX_DEFAULT_REPEAT}", "OUT_OF_RANGE"))
    return violations
