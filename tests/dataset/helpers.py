"""Building blocks for dataset-service tests: image bytes and client calls."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator, Sequence

import grpc
import numpy as np
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from PIL import Image

from kiln.v1 import dataset_pb2 as pb
from kiln.v1 import dataset_pb2_grpc
from services.common.errors import status_details

CHUNK = 1024 * 1024


def image_bytes(width: int = 96, height: int = 80, fmt: str = "PNG", mode: str = "RGB", seed: int = 0,
                **save: object) -> bytes:
    """A noisy image, distinct per seed (so its sha256 is too)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def upload_messages(parent: str, data: bytes, filename: str = "photo.png",
                    role: int = pb.IMAGE_ROLE_TRAINING, chunk: int = CHUNK, **meta: object
                    ) -> Iterator[pb.UploadImageRequest]:
    yield pb.UploadImageRequest(metadata=pb.UploadImageMetadata(parent=parent, filename=filename, role=role,
                                                                **meta))  # type: ignore[arg-type]
    for start in range(0, len(data), chunk):
        yield pb.UploadImageRequest(chunk=data[start:start + chunk])


def upload(stub: dataset_pb2_grpc.DatasetServiceStub, parent: str, data: bytes, filename: str = "photo.png",
           role: int = pb.IMAGE_ROLE_TRAINING, **meta: object) -> pb.Image:
    return stub.UploadImage(upload_messages(parent, data, filename, role, **meta))


def new_dataset(stub: dataset_pb2_grpc.DatasetServiceStub, family: int = pb.MODEL_FAMILY_SD15,
                default_repeat: int = 10, name: str = "") -> pb.Dataset:
    return stub.CreateDataset(pb.CreateDatasetRequest(
        dataset=pb.Dataset(display_name=name or f"test {uuid.uuid4().hex[:6]}", family=family,
                           default_repeat=default_repeat)))


def failure(call: object, *args: object, **kwargs: object) -> tuple[grpc.StatusCode, str, list[str]]:
    """Run a call expected to fail: its code, ErrorInfo reason and violated fields."""
    try:
        result = call(*args, **kwargs)  # type: ignore[operator]
        if isinstance(result, Iterator):
            list(result)
    except grpc.RpcError as err:
        info, violations = status_details(err)
        assert info is not None, f"no ErrorInfo on {err.code()}: {err.details()}"
        assert info.domain == "kiln.dev"
        return err.code(), info.reason, [v.field for v in violations]
    raise AssertionError("the call succeeded")


def quota_failure(error: grpc.RpcError) -> error_details_pb2.QuotaFailure:
    """The QuotaFailure a RESOURCE_EXHAUSTED answer carries in its details."""
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    status = rpc_status.from_call(error)
    quota = error_details_pb2.QuotaFailure()
    assert status is not None and any(d.Unpack(quota) for d in status.details if d.Is(quota.DESCRIPTOR)), status
    return quota


def names_of(images: Sequence[pb.Image]) -> list[str]:
    return [i.name for i in images]


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height pixels (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))
