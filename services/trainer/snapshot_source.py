"""Where a job's snapshot comes from: the dataset service snapshots a dataset at submit time, or
confirms that a named snapshot exists for the caller's tenant; the manifest is then read from
the object store, where the dataset service wrote it."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from kiln.v1 import dataset_pb2 as dpb
from kiln.v1 import dataset_pb2_grpc
from services.common.errors import FieldViolation, ServiceError, failed_precondition, invalid, unavailable
from services.common.internal_client import tenant_metadata

DATASET_SERVICE = "dataset service"
# Answers of the dataset service that mean "try again later", not "your request is wrong".
_OUTAGES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL,
            grpc.StatusCode.UNKNOWN, grpc.StatusCode.RESOURCE_EXHAUSTED}


class SnapshotSource:
    def __init__(self, channel: grpc.aio.Channel | None, timeout: float = 30.0) -> None:
        self._channel = channel
        self._stub: dataset_pb2_grpc.DatasetServiceAsyncStub | None = None
        if channel is not None:
            self._stub = dataset_pb2_grpc.DatasetServiceStub(channel)
        self._timeout = timeout

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    def _require(self) -> dataset_pb2_grpc.DatasetServiceAsyncStub:
        if self._stub is None:
            raise failed_precondition("this trainer service has no dataset service to snapshot datasets with "
                                      "(set KILN_DATASET_ADDRESS)", "NO_DATASET_SERVICE")
        return self._stub

    async def snapshot_dataset(self, tenant: str, dataset: str, request_id: str, field: str) -> dpb.Snapshot:
        stub = self._require()
        request = dpb.CreateSnapshotRequest(parent=dataset, request_id=request_id)
        try:
            return await stub.CreateSnapshot(request, metadata=tenant_metadata(tenant), timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            raise _translated(err, field) from None

    async def get_snapshot(self, tenant: str, name: str, field: str) -> dpb.Snapshot:
        stub = self._require()
        try:
            return await stub.GetSnapshot(dpb.GetSnapshotRequest(name=name), metadata=tenant_metadata(tenant),
                                          timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            raise _translated(err, field) from None


def _translated(err: grpc.aio.AioRpcError, field: str) -> ServiceError:
    """The dataset service's refusal, said about the trainer request's own field."""
    code = err.code()
    if code in _OUTAGES:
        return unavailable(DATASET_SERVICE, f"the dataset service did not answer: {code.name}: {err.details()}")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return invalid([FieldViolation(field, _detail(err))])
    if code == grpc.StatusCode.NOT_FOUND:
        return ServiceError(code, err.details() or "not found", "NOT_FOUND", metadata={"field": field})
    return ServiceError(code, err.details() or code.name, _reason(err) or code.name, metadata={"field": field})


def _detail(err: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                if bad.field_violations:
                    return bad.field_violations[0].description
    return err.details() or "invalid"


def _reason(err: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                return info.reason
    return ""
