"""The DatasetService gRPC handlers, grouped by resource in the *_rpc modules."""

from __future__ import annotations

from kiln.v1 import dataset_pb2_grpc
from services.dataset.captions_rpc import CaptionRpcs
from services.dataset.crops_rpc import CropRpcs
from services.dataset.datasets_rpc import DatasetRpcs
from services.dataset.images_rpc import ImageRpcs
from services.dataset.snapshots_rpc import SnapshotRpcs
from services.dataset.uploads_rpc import UploadRpcs


class DatasetServicer(DatasetRpcs, UploadRpcs, ImageRpcs, CropRpcs, CaptionRpcs, SnapshotRpcs,
                      dataset_pb2_grpc.DatasetServiceServicer):
    pass
